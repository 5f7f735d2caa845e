"""PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side in one run.

    pytest benchmarks/bench_backends.py --benchmark-only
    QUALS_BENCH_THREADS=2        threads for every backend (default: all cores)
    QUALS_BENCH_SIZES=oracle     models to run (default: oracle,bart-base)
    QUALS_BENCH_ROUNDS=3         timed rounds per benchmark (after one warm-up round)
    QUALS_BENCH_SMOKE=1          CI: a tiny random model, small search, one round

Models: the oracle model (../shared/oracle/model, 0.2M parameters) and a randomly initialised
BART-base-sized model (d_model 768, 6+6 layers, 12 heads, vocab 50265; 140M parameters) built and
exported on first use and kept in the cache (see conftest.bench_cache). Neither has a tokenizer, so
inputs are random token ids: generation runs QUALS's settings (60 beams in 60 groups, min_len 8,
max_len 60) on 2 summaries of 40 tokens in one batch; rescoring scores 10 targets of 20 tokens
against a 400-token source. A random model seldom emits EOS, so its hypotheses run to max_len:
an upper bound of a trained model's generation time. The summary at the end of the run prints
summaries (targets) per second, the speed-up over torch and the peak resident memory each call
added.
"""
import os

import numpy as np
import pytest

SMOKE = os.environ.get("QUALS_BENCH_SMOKE") == "1"
THREADS = int(os.environ.get("QUALS_BENCH_THREADS") or os.cpu_count() or 1)
ROUNDS = 1 if SMOKE else int(os.environ.get("QUALS_BENCH_ROUNDS", "3"))
RANDOM_MODELS = {
    "bart-base": dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                      max_position_embeddings=1024),
    "smoke": dict(vocab_size=320, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
}
SIZES = ["smoke"] if SMOKE else os.environ.get("QUALS_BENCH_SIZES", "oracle,bart-base").split(",")
BACKENDS = ["torch", "onnx", "onnx-int8"]
GEN = dict(num_beams=4, num_groups=4, min_len=2, max_len=8) if SMOKE else dict(
    num_beams=60, num_groups=60, diversity_strength=0.5, min_len=8, max_len=60)
N_SUMMARIES, SUMMARY_LEN = (2, 10) if SMOKE else (2, 40)
SOURCE_LEN, N_TARGETS, TARGET_LEN = (30, 3, 5) if SMOKE else (400, 10, 20)

_loaded = {}


def _build_random_bart(path, recipe):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_bos_token_id=None, forced_eos_token_id=None, dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0, scale_embedding=False, **recipe)
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).eval().save_pretrained(str(path))


def _source_dir(size, cache):
    if size == "oracle":
        path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "oracle", "model")
        if not os.path.isdir(path):
            pytest.skip("../shared/oracle is not beside this checkout")
        return path
    if size not in RANDOM_MODELS:
        raise ValueError("unknown size %r; choose from oracle, %s" % (size, ", ".join(RANDOM_MODELS)))
    path = cache / ("random-" + size)
    if not (path / "config.json").is_file():
        _build_random_bart(path, RANDOM_MODELS[size])
    return path


def _export_dir(size, src, cache, int8):
    from quals_fast.checkpoint import ONNX_MANIFEST
    from quals_fast.export import export_onnx

    out = cache / ("onnx-%s%s" % (size, "-int8" if int8 else ""))
    if not (out / ONNX_MANIFEST).is_file():
        export_onnx(src, out, int8=int8, validate=not int8)
    return out


@pytest.fixture(scope="module")
def model_for(bench_cache):
    def get(size, backend):
        key = (size, backend)
        if key not in _loaded:
            from quals_fast import QAGen

            if backend != "torch":
                pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quals-fast[onnx]')")
            src = _source_dir(size, bench_cache)
            if backend == "torch":
                _loaded[key] = QAGen.load(src, backend="torch", threads=THREADS)
            else:
                _loaded[key] = QAGen.load(_export_dir(size, src, bench_cache, backend.endswith("int8")),
                                          backend="onnx", threads=THREADS)
        return _loaded[key]

    return get


def _ids(rng, spec, n):
    ids = rng.integers(4, spec.vocab_size, size=n)
    return [int(x) for x in ids] + [spec.eos_id]


def _record(benchmark, bench_results, group, backend, per_call, unit, mem):
    benchmark.extra_info.update(threads=THREADS, peak_rss_added_mb=round(mem.delta_mb, 1), items_per_call=per_call)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    s = stats.stats
    bench_results[group][backend] = {"min": s.min, "mean": s.mean, "per_call": per_call, "unit": unit,
                                     "peak_mb": mem.delta_mb}
    benchmark.extra_info["%s_per_second" % unit] = per_call / s.min


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_generate(benchmark, model_for, bench_results, peak_rss, size, backend):
    model = model_for(size, backend)
    rng = np.random.default_rng(0)
    inputs = [_ids(rng, model.spec, SUMMARY_LEN) for _ in range(N_SUMMARIES)]
    group = "generate %s (threads %d)" % (size, THREADS)
    benchmark.group = group
    with peak_rss() as mem:
        hyps = benchmark.pedantic(model.generate_ids, args=(inputs,), kwargs=GEN, rounds=ROUNDS, iterations=1,
                                  warmup_rounds=0 if SMOKE else 1)
    assert len(hyps) == N_SUMMARIES
    _record(benchmark, bench_results, group, backend, N_SUMMARIES, "summaries", mem)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_rescore(benchmark, model_for, bench_results, peak_rss, size, backend):
    model = model_for(size, backend)
    rng = np.random.default_rng(1)
    source = _ids(rng, model.spec, min(SOURCE_LEN, model.spec.max_source_positions) - 1)
    targets = [_ids(rng, model.spec, TARGET_LEN) for _ in range(N_TARGETS)]
    group = "rescore %s (threads %d)" % (size, THREADS)
    benchmark.group = group
    with peak_rss() as mem:
        scores = benchmark.pedantic(model.score_ids, args=(source, targets), rounds=ROUNDS * 3, iterations=1,
                                    warmup_rounds=0 if SMOKE else 1)
    assert len(scores) == N_TARGETS
    _record(benchmark, bench_results, group, backend, N_TARGETS, "targets", mem)
