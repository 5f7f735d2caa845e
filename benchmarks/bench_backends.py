"""PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8 (and the naive QUALS), side by side in one run.

    pytest benchmarks/bench_backends.py --benchmark-only
    QUALS_BENCH_THREADS=1 pytest benchmarks/bench_backends.py --benchmark-only     # one thread
    QUALS_BENCH_THREADS=1,2 pytest benchmarks/bench_backends.py --benchmark-only   # 1 and 2 threads, one run

Settings (environment):
    QUALS_BENCH_THREADS=2         threads for every backend; a comma list runs each count in turn
                                  (default: all cores)
    QUALS_BENCH_SIZES=default     models to run (default: default,bart-base)
    QUALS_BENCH_ROUNDS=3          timed rounds per benchmark (after one untimed warm-up call)
    QUALS_BENCH_E2E_PAIRS=8       news pairs per end-to-end call (size default)
    QUALS_BENCH_DEFAULT_MODEL=DIR another QAGen folder (with a tokenizer) for size default
    QUALS_BENCH_CACHE=DIR         where built models and ONNX exports are kept (default: pytest's cache)
    QUALS_BENCH_SMOKE=1           CI: size smoke only, small search, one round

Inputs are real news: the first pairs of ../shared/data/news (beside this checkout; its
cnndm_1000.jsonl and xsum_1000.jsonl hold {id, source, summary} lines), alternating CNN/DM and
XSum in file order (quals_fast.bench_cli.load_news_pairs). Without that folder the tests skip.

Sizes:
- `default`: the embedded default QAGen model (quals_fast/models/qagen-minilm, a MiniLM-BART of
  30M parameters with a WordPiece tokenizer) run end to end, text in and scores out, through
  `QualsScorer(folder, backend=...)` with QUALS's settings (60 beams in 60 groups, diversity 0.5,
  8 to 60 tokens, up to 10 pairs, batches of 8) on QUALS_BENCH_E2E_PAIRS pairs: generation +
  selection + rescoring, reported as summaries per second. Backends: torch, onnx (fp32 export),
  onnx-int8 (int8 export), and `naive`: the straightforward QUALS reference
  (quals_fast.reference.quals_reference: transformers' BART, the summary's encoder states copied
  to every beam, one full forward pass per kept pair for rescoring), the baseline that the
  engine's speed-ups are quoted against.
- `bart-base`: a randomly initialised BART-base-sized model (d_model 768, 6+6 layers, 12 heads,
  vocab 50265; 140M parameters) built and exported on first use. It has no tokenizer, so the news
  texts are tokenised with the default model's WordPiece tokenizer (ids < 30523 fit its
  vocabulary) and fed through `QAGen.generate_ids` / `score_ids`: generation runs QUALS's
  settings on 2 summaries in one batch; rescoring scores 10 targets (the first 20 tokens of 10
  summaries) against one whole news source. A random model seldom emits EOS, so its hypotheses run
  to max_len: an upper bound of a trained model's generation time at this scale.
- `smoke`: the tiny random model of tests/tiny_model.py (its own word-level tokenizer, 128
  positions), through both paths above with 4 beams and at most 8 tokens on shortened texts.

Every model is loaded once per backend (ONNX sessions once per thread count) and called once
untimed before the timed rounds. The summary at the end of the run prints, per group, each
backend's items per second, its speed-up over torch and over naive, the resident memory that
loading the model and its first call added ("footprint") and the peak that a warm call adds on
top (conftest.PeakRSS), and for end-to-end runs the largest |QUALS difference| from torch.
"""
import os
from pathlib import Path

import pytest

SMOKE = os.environ.get("QUALS_BENCH_SMOKE") == "1"
THREADS = [int(t) for t in (os.environ.get("QUALS_BENCH_THREADS") or str(os.cpu_count() or 1)).split(",")]
ROUNDS = 1 if SMOKE else int(os.environ.get("QUALS_BENCH_ROUNDS", "3"))
SIZES = ["smoke"] if SMOKE else os.environ.get("QUALS_BENCH_SIZES", "default,bart-base").split(",")
IDS_SIZES = [s for s in SIZES if s in ("bart-base", "smoke")]   # generate_ids / score_ids
TEXT_SIZES = [s for s in SIZES if s in ("default", "smoke")]    # QualsScorer end to end
UNKNOWN = set(SIZES) - set(IDS_SIZES) - set(TEXT_SIZES)
if UNKNOWN:
    raise ValueError("unknown QUALS_BENCH_SIZES %s; choose from default, bart-base, smoke" % sorted(UNKNOWN))
BACKENDS = ["torch", "onnx", "onnx-int8"]
BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)
GEN = dict(num_beams=4, num_groups=4, min_len=2, max_len=8) if SMOKE else dict(
    num_beams=60, num_groups=60, diversity_strength=0.5, min_len=8, max_len=60)
N_SUMMARIES, N_TARGETS, TARGET_LEN = (2, 3, 5) if SMOKE else (2, 10, 20)
E2E_PAIRS = 2 if SMOKE else int(os.environ.get("QUALS_BENCH_E2E_PAIRS", "8"))
SMOKE_WORDS = (40, 12)   # source, summary words kept in smoke runs (the tiny model has 128 positions)
NEWS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "news"

_loaded = {}      # (maker, size, backend, threads or None) -> a QAGen, or a function scoring texts
_e2e_scores = {}  # (size, threads) -> backend -> QUALS per pair
load_mb = {}


# ------------------------------------------------------------------ models
def _build_random_bart(path, recipe):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_bos_token_id=None, forced_eos_token_id=None, dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0, scale_embedding=False, **recipe)
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).eval().save_pretrained(str(path))


def _default_model():
    """$QUALS_BENCH_DEFAULT_MODEL (any QAGen folder with a tokenizer), else the embedded default."""
    from quals_fast.checkpoint import default_model_dir

    path = Path(os.environ.get("QUALS_BENCH_DEFAULT_MODEL") or default_model_dir())
    if not (path / "config.json").is_file():
        pytest.skip("no default model installed; set QUALS_BENCH_DEFAULT_MODEL to a QAGen folder")
    return path


def _source_dir(size, cache):
    """The torch folder of a size, built into the cache on first use."""
    if size == "default":
        return _default_model()
    path = cache / ("random-" + size if size == "bart-base" else "tiny")
    if not (path / "config.json").is_file():
        if size == "bart-base":
            _build_random_bart(path, BART_BASE)
        else:
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from tiny_model import build_tiny_model

            build_tiny_model(path)
    return path


def _set_torch_threads(threads):
    import torch

    torch.set_num_threads(threads)   # process-wide: set before every torch or naive call


def _load(size, backend, threads, cache, peak_rss, make):
    """make(folder, runtime, threads) -> the loaded object, built once per (make, size, backend,
    threads) with its resident-memory cost recorded. torch objects are shared by thread counts
    (torch's thread count is process-wide), ONNX Runtime sessions are not (theirs is fixed at
    creation)."""
    from quals_fast.export import cached_export

    key = (make.__name__, size, backend, threads if backend.startswith("onnx") else None)
    if key not in _loaded:
        if backend.startswith("onnx"):
            pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'quals-fast[onnx]')")
        path = _source_dir(size, cache)
        int8 = backend == "onnx-int8"
        if backend.startswith("onnx"):
            path = cached_export(path, cache, int8=int8, validate=not int8)
        _set_torch_threads(threads)
        with peak_rss() as mem:
            _loaded[key] = make(path, "onnx" if backend.startswith("onnx") else backend, threads)
        load_mb[key] = mem.delta_mb
    _set_torch_threads(threads)
    return _loaded[key], load_mb[key]


# ------------------------------------------------------------------ inputs
def _news(n):
    from quals_fast.bench_cli import load_news_pairs, truncate_words

    if not NEWS.is_dir():
        pytest.skip("../shared/data/news is not beside this checkout")
    pairs = load_news_pairs(n, NEWS.parent)
    if SMOKE:
        pairs = [dict(p, source=truncate_words(p["source"], SMOKE_WORDS[0]),
                      summary=truncate_words(p["summary"], SMOKE_WORDS[1])) for p in pairs]
    return [p["source"] for p in pairs], [p["summary"] for p in pairs]


def _token_ids(model, texts, limit):
    """Texts as ids ending with the model's EOS, at most `limit` tokens: the model's own tokenizer,
    else (a random model) the default model's."""
    tok = model.tokenizer
    if tok is None:
        from quals_fast.checkpoint import load_tokenizer, open_checkpoint

        tok = load_tokenizer(open_checkpoint(_default_model()))
    limit = min(limit, model.spec.max_source_positions)
    out = [ids[: limit - 1] + [model.spec.eos_id] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert all(max(ids) < model.spec.vocab_size for ids in out), "tokenizer ids outside the model's vocabulary"
    return out


# ------------------------------------------------------------------ measurement
def _timed(benchmark, peak_rss, fn, args, kwargs, rounds):
    """One untimed first call (lazy weight paging and ONNX Runtime's weight pre-packing happen
    there), then the timed rounds; returns (result, first-call MB, timed-rounds peak MB)."""
    with peak_rss() as first:
        fn(*args, **kwargs)
    with peak_rss() as timed:
        out = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds, iterations=1)
    return out, first.delta_mb, timed.delta_mb


def _record(benchmark, bench_results, group, backend, threads, per_call, unit, mb, note=""):
    """mb: (load, first call, warm-call peak) resident MB."""
    load, first, peak = mb
    benchmark.extra_info.update(threads=threads, items_per_call=per_call, load_rss_mb=round(load, 1),
                                first_call_rss_mb=round(first, 1), peak_rss_added_mb=round(peak, 1))
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    s = stats.stats
    bench_results[group][backend] = {"min": s.min, "mean": s.mean, "per_call": per_call, "unit": unit,
                                     "peak_mb": peak, "load_mb": load + first, "note": note}
    benchmark.extra_info["%s_per_second" % unit] = per_call / s.min


def _qagen(path, runtime, threads):
    from quals_fast import QAGen

    return QAGen.load(path, backend=runtime, threads=threads)


# ------------------------------------------------------------------ generate_ids / score_ids
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", IDS_SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_generate(benchmark, bench_cache, bench_results, peak_rss, size, backend, threads):
    model, load = _load(size, backend, threads, bench_cache, peak_rss, _qagen)
    _, summaries = _news(N_SUMMARIES)
    inputs = _token_ids(model, summaries, 16 if SMOKE else model.spec.max_source_positions)
    group = "generate %s, %d news summaries (threads %d)" % (size, N_SUMMARIES, threads)
    benchmark.group = group
    hyps, first_mb, peak_mb = _timed(benchmark, peak_rss, model.generate_ids, (inputs,), GEN, ROUNDS)
    assert len(hyps) == N_SUMMARIES
    _record(benchmark, bench_results, group, backend, threads, N_SUMMARIES, "summaries", (load, first_mb, peak_mb))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", IDS_SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rescore(benchmark, bench_cache, bench_results, peak_rss, size, backend, threads):
    model, load = _load(size, backend, threads, bench_cache, peak_rss, _qagen)
    sources, summaries = _news(N_TARGETS)
    [source] = _token_ids(model, sources[:1], 30 if SMOKE else model.spec.max_source_positions)
    targets = _token_ids(model, summaries, TARGET_LEN + 1)
    group = "rescore %s, %d targets vs %d-token source (threads %d)" % (size, N_TARGETS, len(source), threads)
    benchmark.group = group
    scores, first_mb, peak_mb = _timed(benchmark, peak_rss, model.score_ids, (source, targets), {}, ROUNDS * 3)
    assert len(scores) == N_TARGETS
    _record(benchmark, bench_results, group, backend, threads, N_TARGETS, "targets", (load, first_mb, peak_mb))


# ------------------------------------------------------------------ QualsScorer end to end (text)
def _scorer(path, runtime, threads):
    from quals_fast import QualsScorer

    if runtime != "naive":
        scorer = QualsScorer(path, backend=runtime, backend_options={"threads": threads}, **GEN)
        return lambda sources, summaries: scorer.score(sources, summaries, batch_size=8)
    from quals_fast.reference.quals_reference import load_reference_model, quals_reference

    model, tok = load_reference_model(path)
    return lambda sources, summaries: quals_reference(None, sources, summaries, model=model, tokenizer=tok,
                                                      batch_size=8, **GEN)


def _max_diff_vs_torch(size, threads, backend, results):
    """Stores this backend's QUALS per pair; returns its largest |difference| from torch's (None
    before torch has run, or when no pair is scored by both)."""
    scores = _e2e_scores.setdefault((size, threads), {})
    scores[backend] = [r.score for r in results]
    diffs = [abs(a - b) for a, b in zip(scores[backend], scores.get("torch", [])) if a is not None and b is not None]
    return max(diffs) if diffs else None


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", TEXT_SIZES)
@pytest.mark.parametrize("backend", BACKENDS + ["naive"])
def test_end_to_end(benchmark, bench_cache, bench_results, peak_rss, size, backend, threads):
    score, load = _load(size, backend, threads, bench_cache, peak_rss, _scorer)
    sources, summaries = _news(E2E_PAIRS)
    group = "end-to-end %s, %d news pairs (threads %d)" % (size, E2E_PAIRS, threads)
    benchmark.group = group
    results, first_mb, peak_mb = _timed(benchmark, peak_rss, score, (sources, summaries), {}, ROUNDS)
    assert len(results) == E2E_PAIRS
    benchmark.extra_info["pairs_kept"] = sum(len(r.pairs) for r in results)
    diff = _max_diff_vs_torch(size, threads, backend, results)
    note = "" if backend == "torch" else "max |QUALS - torch's| %.2g" % diff if diff is not None else (
        "no pair scored by both it and torch" if "torch" in _e2e_scores[(size, threads)] else "")
    benchmark.extra_info["max_abs_quals_diff_vs_torch"] = diff
    _record(benchmark, bench_results, group, backend, threads, E2E_PAIRS, "summaries", (load, first_mb, peak_mb),
            note)
