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
summaries (targets) per second, the speed-up over torch, the resident memory that loading the
model and its first call added ("footprint") and the peak that a warm call adds on top.
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
load_mb = {}


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
def model_for(bench_cache, peak_rss):
    def get(size, backend):
        key = (size, backend)
        if key not in _loaded:
            from quals_fast import QAGen

            if backend != "torch":
                pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quals-fast[onnx]')")
            src = _source_dir(size, bench_cache)
            path = src if backend == "torch" else _export_dir(size, src, bench_cache, backend.endswith("int8"))
            with peak_rss() as mem:
                _loaded[key] = QAGen.load(path, backend="torch" if backend == "torch" else "onnx", threads=THREADS)
            load_mb[key] = mem.delta_mb
        return _loaded[key]

    return get


def _ids(rng, spec, n):
    ids = rng.integers(4, spec.vocab_size, size=n)
    return [int(x) for x in ids] + [spec.eos_id]


def _timed(benchmark, peak_rss, fn, args, kwargs, rounds):
    """One untimed first call (lazy weight paging and ONNX Runtime's weight pre-packing happen
    there), then the timed rounds; returns (result, first-call MB, timed-rounds peak MB)."""
    with peak_rss() as first:
        fn(*args, **kwargs)
    with peak_rss() as timed:
        out = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds, iterations=1)
    return out, first.delta_mb, timed.delta_mb


def _record(benchmark, bench_results, group, key, per_call, unit, first_mb, peak_mb):
    size, backend = key
    benchmark.extra_info.update(threads=THREADS, items_per_call=per_call, load_rss_mb=round(load_mb.get(key, 0), 1),
                                first_call_rss_mb=round(first_mb, 1), peak_rss_added_mb=round(peak_mb, 1))
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    s = stats.stats
    bench_results[group][backend] = {"min": s.min, "mean": s.mean, "per_call": per_call, "unit": unit,
                                     "peak_mb": peak_mb, "load_mb": load_mb.get(key, 0.0) + first_mb}
    benchmark.extra_info["%s_per_second" % unit] = per_call / s.min


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_generate(benchmark, model_for, bench_results, peak_rss, size, backend):
    model = model_for(size, backend)
    rng = np.random.default_rng(0)
    inputs = [_ids(rng, model.spec, SUMMARY_LEN) for _ in range(N_SUMMARIES)]
    group = "generate %s (threads %d)" % (size, THREADS)
    benchmark.group = group
    hyps, first_mb, peak_mb = _timed(benchmark, peak_rss, model.generate_ids, (inputs,), GEN, ROUNDS)
    assert len(hyps) == N_SUMMARIES
    _record(benchmark, bench_results, group, (size, backend), N_SUMMARIES, "summaries", first_mb, peak_mb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_rescore(benchmark, model_for, bench_results, peak_rss, size, backend):
    model = model_for(size, backend)
    rng = np.random.default_rng(1)
    source = _ids(rng, model.spec, min(SOURCE_LEN, model.spec.max_source_positions) - 1)
    targets = [_ids(rng, model.spec, TARGET_LEN) for _ in range(N_TARGETS)]
    group = "rescore %s (threads %d)" % (size, THREADS)
    benchmark.group = group
    scores, first_mb, peak_mb = _timed(benchmark, peak_rss, model.score_ids, (source, targets), {}, ROUNDS * 3)
    assert len(scores) == N_TARGETS
    _record(benchmark, bench_results, group, (size, backend), N_TARGETS, "targets", first_mb, peak_mb)


# ------------------------------------------------------------------ end to end, default model
E2E_PAIRS = 2 if SMOKE else int(os.environ.get("QUALS_BENCH_E2E_PAIRS", "8"))
NEWS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "news")
_scorers = {}


def _default_model():
    """$QUALS_BENCH_DEFAULT_MODEL (any QAGen folder with a tokenizer), else the embedded default."""
    from quals_fast.checkpoint import default_model_dir

    path = os.environ.get("QUALS_BENCH_DEFAULT_MODEL") or default_model_dir()
    if not os.path.isfile(os.path.join(str(path), "config.json")):
        pytest.skip("no default model installed; set QUALS_BENCH_DEFAULT_MODEL to a QAGen folder")
    return path


def _news_pairs(n):
    import json

    if not os.path.isdir(NEWS):
        pytest.skip("../shared/data/news is not beside this checkout")
    pairs = []
    for name in ("xsum_1000.jsonl", "cnndm_1000.jsonl"):
        with open(os.path.join(NEWS, name), encoding="utf-8") as f:
            pairs += [json.loads(line) for _, line in zip(range((n + 1) // 2), f)]
    return [p["source"] for p in pairs[:n]], [p["summary"] for p in pairs[:n]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end(benchmark, bench_cache, bench_results, peak_rss, backend):
    from quals_fast import QualsScorer
    from quals_fast.export import _file_hash

    src = _default_model()
    sources, summaries = _news_pairs(E2E_PAIRS)
    if backend not in _scorers:
        path = src
        if backend != "torch":
            pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quals-fast[onnx]')")
            weights = os.path.join(str(src), "model.safetensors")
            tag = _file_hash(weights)[:12] if os.path.isfile(weights) else "x"
            path = _export_dir("default-" + tag, src, bench_cache, backend.endswith("int8"))
        with peak_rss() as mem:
            _scorers[backend] = QualsScorer(path, backend="torch" if backend == "torch" else "onnx",
                                            backend_options={"threads": THREADS}, **({"max_len": 8} if SMOKE else {}))
        load_mb[("default", backend)] = mem.delta_mb
    scorer = _scorers[backend]
    group = "end-to-end default model, %d news pairs (threads %d)" % (E2E_PAIRS, THREADS)
    benchmark.group = group
    results, first_mb, peak_mb = _timed(benchmark, peak_rss, scorer.score, (sources, summaries), {"batch_size": 8},
                                        ROUNDS)
    assert len(results) == E2E_PAIRS
    benchmark.extra_info["pairs_kept"] = sum(len(r.pairs) for r in results)
    _record(benchmark, bench_results, group, ("default", backend), E2E_PAIRS, "summaries", first_mb, peak_mb)
