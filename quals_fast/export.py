"""`quals-fast export`: a QAGen checkpoint -> ONNX graphs for the onnx backend.

Three graphs, traced from small wrappers around the torch backend's own layer code so that the two
backends cannot drift apart:

- `encoder.onnx`: source ids -> every decoder layer's cross-attention keys/values, computed once
  per input (batch, heads, src, head_dim);
- `decoder.onnx`: one search step. It takes those per-input keys/values and folds an input's beams
  into the query axis exactly like the torch backend, so they are never copied per beam. The past
  self-attention cache is gathered by the search's `beam_idx` inside the graph, so that with IO
  binding the cache never leaves the device. One graph serves the first step too (past length 0);
- `score.onnx`: teacher-forced log-probs of all targets of a source against one encoding.

Why not optimum's exporter: its seq2seq decoder takes the cross-attention keys/values as part of
`past_key_values`, one copy per row, i.e. 60 copies per summary for QUALS, and it cannot express
the beam folding. Its ORT optimizer/quantizer classes only accept optimum's own exported
architectures, so int8 and fp16 use onnxruntime's tools directly (the same code optimum wraps).
"""
import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from quals_fast.checkpoint import ONNX_MANIFEST as MANIFEST
from quals_fast.checkpoint import ORIGINAL_SEPARATOR, WEIGHT_FILES, open_checkpoint

FORMAT_VERSION = 1
GRAPHS = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "score": "score.onnx"}
DEFAULT_OPSET = 17
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                "spiece.model", "sentencepiece.bpe.model")
# Kept in float32 by --fp16: the search compares log-probs across 60 beams and the reference
# computes them in fp32; a float16 log-softmax would reorder near ties.
FP16_FP32_OPS = ["LogSoftmax", "ReduceLogSumExp"]


def io_names(num_layers):
    """Input/output names shared by the exporter and the backend."""
    cross = ["cross_key_%d" % i for i in range(num_layers)] + ["cross_value_%d" % i for i in range(num_layers)]
    past = ["past_key_%d" % i for i in range(num_layers)] + ["past_value_%d" % i for i in range(num_layers)]
    present = ["present_key_%d" % i for i in range(num_layers)] + ["present_value_%d" % i for i in range(num_layers)]
    return {
        "encoder_in": ["input_ids"], "encoder_out": cross,
        "decoder_in": ["tokens", "beam_idx", "source_mask"] + cross + past, "decoder_out": ["lprobs"] + present,
        "score_in": ["decoder_input_ids", "labels", "source_mask"] + cross, "score_out": ["token_logprobs"],
    }


def _wrappers(tb):
    """nn.Modules over a TorchBackend `tb`, reusing its helpers (_heads, _embed, _layer, _logits)."""
    import torch

    layers = tb._decoder.layers
    n_layers = len(layers)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tb.model  # registers the weights so the exporter stores them once

        def forward(self, input_ids):
            mask = input_ids.ne(tb.spec.pad_id)
            hidden = tb._encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
            keys = [tb._heads(layer.encoder_attn.k_proj(hidden)) for layer in layers]
            values = [tb._heads(layer.encoder_attn.v_proj(hidden)) for layer in layers]
            return tuple(keys + values)

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tb.model

        def forward(self, tokens, beam_idx, source_mask, *kv):
            cross_k, cross_v = kv[:n_layers], kv[n_layers: 2 * n_layers]
            past_k, past_v = kv[2 * n_layers: 3 * n_layers], kv[3 * n_layers:]
            mask = source_mask[:, None, None, :]
            rows_per_input = tokens.shape[0] // source_mask.shape[0]
            # The step number is the past length, so no separate position input is needed.
            h = tb._embed(tokens[:, None], past_k[0].shape[2])
            keys, values = [], []
            for i, layer in enumerate(layers):
                sa = layer.self_attn
                k = torch.cat([past_k[i].index_select(0, beam_idx), tb._heads(sa.k_proj(h))], dim=2)
                v = torch.cat([past_v[i].index_select(0, beam_idx), tb._heads(sa.v_proj(h))], dim=2)
                keys.append(k)
                values.append(v)
                h = tb._layer(layer, h, k, v, False, cross_k[i], cross_v[i], mask, rows_per_input)
            lprobs = torch.log_softmax(tb._logits(h[:, 0]), dim=-1)
            return (lprobs,) + tuple(keys + values)

    class Score(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tb.model

        def forward(self, decoder_input_ids, labels, source_mask, *kv):
            cross_k, cross_v = kv[:n_layers], kv[n_layers:]
            mask = source_mask[:, None, None, :]
            rows_per_input = decoder_input_ids.shape[0] // source_mask.shape[0]
            h = tb._embed(decoder_input_ids, 0)
            for i, layer in enumerate(layers):
                sa = layer.self_attn
                k, v = tb._heads(sa.k_proj(h)), tb._heads(sa.v_proj(h))
                h = tb._layer(layer, h, k, v, True, cross_k[i], cross_v[i], mask, rows_per_input)
            logits = tb._logits(h)
            return logits.gather(-1, labels[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)

    return Encoder().eval(), DecoderStep().eval(), Score().eval()


def _sample_inputs(tb, batch=2, beams=3, src_len=7, past_len=2, targets=3, width=5):
    """Small non-degenerate shapes (no dimension of size 0 or 1 that tracing could specialise)."""
    import torch

    rng = np.random.default_rng(0)
    vocab, pad = tb.spec.vocab_size, tb.spec.pad_id
    ids = torch.from_numpy(rng.integers(0, vocab, size=(batch, src_len))).long()
    ids[ids == pad] = tb.spec.eos_id
    ids[1, -2:] = pad  # a padded source
    n_layers = len(tb._decoder.layers)
    with torch.no_grad():
        cross = list(_wrappers(tb)[0](ids))
    rows = batch * beams
    shape = (rows, tb.num_heads, past_len, tb.head_dim)
    past = [torch.randn(shape) * 0.1 for _ in range(2 * n_layers)]
    mask = ids.ne(pad)
    dec = (torch.from_numpy(rng.integers(0, vocab, size=rows)).long(),
           torch.from_numpy(rng.permutation(rows)).long(), mask, *cross, *past)
    score = (torch.from_numpy(rng.integers(0, vocab, size=(batch * targets, width))).long(),
             torch.from_numpy(rng.integers(0, vocab, size=(batch * targets, width))).long(), mask, *cross)
    return (ids,), dec, score


def _export(module, args, path, names_in, names_out, dynamic, opset):
    import torch

    with warnings.catch_warnings():
        # The tracer's warnings concern Python-level branches of the HF encoder that are constant for
        # inference (no causal mask in the encoder); the validation step checks the graphs instead.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions():
    import importlib.metadata as md

    out = {}
    for pkg in ("quals-fast", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _share_tied_embedding(path: Path):
    """The exporter stores a tied output projection as a folded transposed copy of the token
    embedding (MatMul wants (d_model, vocab)), so the matrix would be held twice (+154 MB for
    BART-base). Make the token lookup read the transposed copy instead: Gather along axis 1, then
    move d_model last. No-op when the projection is not tied."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmul_b = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits or len(inits[node.input[0]].dims) != 2:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])
        twin = next((b for b in matmul_b if list(inits[b].dims) == [table.shape[1], table.shape[0]]
                     and np.array_equal(numpy_helper.to_array(inits[b]), table.T)), None)
        if twin is None:
            continue
        # Token ids are (rows, length) in both graphs: (d, rows, length) -> (rows, length, d).
        picked = node.output[0] + "_by_column"
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, helper.make_node("Transpose", [picked], list(node.output), perm=[1, 2, 0]))
        graph.node.insert(at, helper.make_node("Gather", [twin, node.input[1]], [picked], axis=1))
        if not any(node.input[0] in n.input for n in graph.node):
            graph.initializer.remove(inits[node.input[0]])
        onnx.save(model, str(path))
        return True
    return False


def _quantize_int8(path: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    # MatMul weights only (activation x activation products in attention stay fp32), per output
    # channel, unsigned: on AVX2 CPUs without VNNI the signed-weight kernel (u8s8) saturates its
    # int16 pair sums, which measured 3-5x larger log-prob errors than u8u8 on the test models.
    quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                     per_channel=True)
    tmp.unlink()


def _convert_fp16(path: Path, keep_fp32_io):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model = convert_float_to_float16(model, keep_io_types=list(keep_fp32_io), op_block_list=FP16_FP32_OPS)
    onnx.save(model, str(path))


def _checkpoint_weights(model_dir):
    checkpoint = open_checkpoint(model_dir, needs_weights=WEIGHT_FILES)
    return checkpoint, next(checkpoint.path / f for f in WEIGHT_FILES if (checkpoint.path / f).is_file())


def cached_export(model_dir, cache_dir, int8=False, fp16=False, validate=True, log=print) -> Path:
    """The ONNX export of `model_dir` under `cache_dir`, made on first use. The folder is named
    after the model folder, the source weights' hash and the precision, and is reused only while
    its manifest records those same weights (a retrained model gets a fresh export). The export is
    written beside it and renamed into place only once complete, so a failed or interrupted export
    is never reused."""
    checkpoint, weights = _checkpoint_weights(model_dir)
    digest = _file_hash(weights)
    kind = "int8" if int8 else "fp16" if fp16 else "fp32"
    out = Path(cache_dir) / ("onnx-%s-%s-%s" % (checkpoint.path.name, digest[:12], kind))
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8"))["source_model"]["sha256"] == digest:
        return out
    partial = out.with_name(out.name + ".partial")
    for stale in (partial, out):
        if stale.exists():
            shutil.rmtree(stale)
    export_onnx(checkpoint.path, partial, int8=int8, fp16=fp16, validate=validate, log=log)
    partial.rename(out)
    log("complete: %s" % out)
    return out


def export_onnx(model_dir, out_dir, opset=DEFAULT_OPSET, int8=False, fp16=False, validate=True, log=print):
    """Export `model_dir` (a Hugging Face BART folder) to `out_dir`; returns the manifest dict.
    With `validate`, the exported graphs are run against the torch backend and the max abs
    differences go into the manifest (fp32 exports fail on a mismatch above 1e-3)."""
    import torch

    from quals_fast.backends.torch_backend import TorchBackend

    if int8 and fp16:
        raise ValueError("choose one of int8 (CPU) and fp16 (GPU)")
    checkpoint, weights = _checkpoint_weights(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tb = TorchBackend(checkpoint.path)
    n_layers = len(tb._decoder.layers)
    names = io_names(n_layers)
    enc, dec, score = _wrappers(tb)
    enc_args, dec_args, score_args = _sample_inputs(tb)
    per_input = {0: "inputs", 2: "src"}
    dyn_enc = {"input_ids": {0: "inputs", 1: "src"}}
    dyn_enc.update({n: per_input for n in names["encoder_out"]})
    dyn_dec = {"tokens": {0: "rows"}, "beam_idx": {0: "rows"}, "source_mask": {0: "inputs", 1: "src"},
               "lprobs": {0: "rows"}}
    dyn_dec.update({n: per_input for n in names["encoder_out"]})
    dyn_dec.update({n: {0: "prev_rows", 2: "past"} for n in names["decoder_in"] if n.startswith("past_")})
    dyn_dec.update({n: {0: "rows", 2: "total"} for n in names["decoder_out"] if n.startswith("present_")})
    dyn_score = {"decoder_input_ids": {0: "rows", 1: "width"}, "labels": {0: "rows", 1: "width"},
                 "source_mask": {0: "inputs", 1: "src"}, "token_logprobs": {0: "rows", 1: "width"}}
    dyn_score.update({n: per_input for n in names["encoder_out"]})
    with torch.no_grad():
        _export(enc, enc_args, out / GRAPHS["encoder"], names["encoder_in"], names["encoder_out"], dyn_enc, opset)
        _export(dec, dec_args, out / GRAPHS["decoder"], names["decoder_in"], names["decoder_out"], dyn_dec, opset)
        _export(score, score_args, out / GRAPHS["score"], names["score_in"], names["score_out"], dyn_score, opset)
    for g in ("decoder", "score"):
        _share_tied_embedding(out / GRAPHS[g])
    if int8:
        for g in GRAPHS.values():
            _quantize_int8(out / g)
    if fp16:
        _convert_fp16(out / GRAPHS["decoder"], ["lprobs"])
        _convert_fp16(out / GRAPHS["score"], ["token_logprobs"])
        _convert_fp16(out / GRAPHS["encoder"], [])

    for name in COPIED_FILES:
        if (checkpoint.path / name).is_file():
            shutil.copyfile(checkpoint.path / name, out / name)
    config = dict(checkpoint.config)
    # The export must be self-describing: the separator the checkpoint uses travels with it.
    config.setdefault("qagen_separator", checkpoint.separator or ORIGINAL_SEPARATOR)
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")

    manifest = {
        "format_version": FORMAT_VERSION,
        "graphs": dict(GRAPHS),
        "io": names,
        "opset": opset,
        "dtype": "float16" if fp16 else "float32",
        "quantization": "int8-dynamic-matmul-u8u8-per-channel" if int8 else None,
        "num_layers": n_layers,
        "num_heads": tb.num_heads,
        "head_dim": tb.head_dim,
        "source_model": {"path": str(checkpoint.path.resolve()), "weights": weights.name,
                         "sha256": _file_hash(weights)},
        "versions": _versions(),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if validate:
        report = validate_export(out, tb)
        manifest["validation"] = report
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log("validation against torch: max |lprobs diff| %.2e over %d steps, max |score diff| %.2e%s" % (
            report["max_abs_diff_lprobs"], report["steps"], report["max_abs_diff_scores"],
            "" if report["ran"] else " (not run: %s)" % report.get("reason")))
        if report["ran"] and not (int8 or fp16) and report["max_abs_diff"] > 1e-3:
            raise RuntimeError("exported graphs disagree with the torch backend (max abs diff %.3g)"
                               % report["max_abs_diff"])
    log("exported %s -> %s (%s%s)" % (checkpoint.path, out, manifest["dtype"],
                                      ", int8" if int8 else ""))
    return manifest


def validate_export(onnx_dir, torch_backend, steps=4, beams=3, seed=0):
    """Runs the torch backend and the exported graphs side by side on random inputs: a few search
    steps with a shuffled beam reorder, then teacher-forced scoring."""
    from quals_fast.backends.onnx_backend import OnnxBackend

    try:
        ob = OnnxBackend(onnx_dir)
    except Exception as exc:  # fp16 graphs may not load on a CPU-only build; report, not fail
        return {"ran": False, "reason": "%s: %s" % (type(exc).__name__, exc), "steps": 0,
                "max_abs_diff_lprobs": float("nan"), "max_abs_diff_scores": float("nan"),
                "max_abs_diff": float("nan")}
    tb = torch_backend
    rng = np.random.default_rng(seed)
    spec = tb.spec
    usable = [t for t in range(spec.vocab_size) if t not in (spec.pad_id, spec.eos_id)]
    srcs = [list(rng.choice(usable, size=n)) + [spec.eos_id] for n in (5, 11)]
    ts, os_ = tb.encode(srcs, beams), ob.encode(srcs, beams)
    rows = len(srcs) * beams
    tokens = np.full(rows, spec.decoder_start_id, dtype=np.int64)
    source_rows, d_lp = None, 0.0
    for _ in range(steps):
        a, b = tb.decoder_step(ts, tokens, source_rows), ob.decoder_step(os_, tokens, source_rows)
        d_lp = max(d_lp, float(np.max(np.abs(a - b))))
        source_rows = np.concatenate([rng.permutation(beams) + i * beams for i in range(len(srcs))])
        tokens = rng.choice(usable, size=rows).astype(np.int64)
    targets = [[list(rng.choice(usable, size=n)) + [spec.eos_id] for n in (3, 7)], [[spec.eos_id]]]
    d_sc = max(float(np.max(np.abs(x - y))) for xs, ys in zip(tb.score_targets(srcs, targets),
                                                               ob.score_targets(srcs, targets))
               for x, y in zip(xs, ys))
    return {"ran": True, "steps": steps, "max_abs_diff_lprobs": d_lp, "max_abs_diff_scores": d_sc,
            "max_abs_diff": max(d_lp, d_sc)}


# ---------------------------------------------------------------------------- CLI
def _cmd_export(args):
    export_onnx(args.model_dir, args.out_dir, opset=args.opset, int8=args.int8, fp16=args.fp16,
                validate=not args.no_validate)
    return 0


def register_cli(subparsers):
    p = subparsers.add_parser(
        "export", help="export a QAGen checkpoint to ONNX for --backend onnx",
        description="Export a QAGen checkpoint (Hugging Face BART folder) to ONNX graphs (encoder, decoder step, "
                    "teacher-forced scorer) plus config, tokenizer and a manifest; the folder then loads with "
                    "backend='onnx'.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of MatMul weights (CPU)")
    group.add_argument("--fp16", action="store_true", help="float16 weights and activations (GPU providers)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison against the torch backend")
    p.set_defaults(func=_cmd_export)
