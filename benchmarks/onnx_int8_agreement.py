"""How far ONNX Runtime fp32 and int8 move QUALS away from PyTorch, on real news pairs.

    python benchmarks/onnx_int8_agreement.py [--n 200] [--threads 2] [--cache-dir runs/bench-models]
                                             [--output runs/onnx_int8_agreement.json]

Exports the QAGen model (default: the embedded quals_fast/models/qagen-minilm) to ONNX fp32 and
int8 (quals_fast.export.cached_export: made once into --cache-dir, reused while the weights are
unchanged; benchmarks/bench_backends.py with QUALS_BENCH_CACHE set to the same folder reuses them),
then scores the first --n document/summary pairs of ../shared/data/news (alternating CNN/DM and
XSum, quals_fast.bench_cli.load_news_pairs) with `QualsScorer(folder, backend=...)` three times:
torch, ONNX fp32 and ONNX int8, with QUALS's default settings. For fp32 vs torch, int8 vs torch
and int8 vs fp32 it reports: the summaries both score, the max and mean |QUALS difference| over
them, Spearman and Pearson of QUALS over them, the summaries that only one scores, and the
summaries whose kept QA pairs (token sequences) differ; and the seconds each pipeline took.
Writes everything (with every score) to --output as JSON and prints a markdown table.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
PIPELINES = {"torch": None, "onnx-fp32": False, "onnx-int8": True}   # name -> int8 (None: no export)
COMPARISONS = (("onnx-fp32", "torch"), ("onnx-int8", "torch"), ("onnx-int8", "onnx-fp32"))


def _rel(path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def correlations(x, y):
    """(Spearman, Pearson); NaN below 3 points or for a constant series. scipy when installed, else
    the NumPy versions in quals_fast.evaluation."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan"), float("nan")
    try:
        from scipy import stats
    except ImportError:
        from quals_fast.evaluation import pearson, spearman

        return spearman(x, y), pearson(x, y)
    return float(stats.spearmanr(x, y)[0]), float(stats.pearsonr(x, y)[0])


def _kept(result):
    return frozenset(tuple(p.tokens) for p in result.pairs)


def compare(a, b) -> dict:
    """Agreement of two lists of QualsResult over the same inputs."""
    both = [(x.score, y.score) for x, y in zip(a, b) if x.score is not None and y.score is not None]
    diffs = np.abs(np.array([x - y for x, y in both], np.float64))
    spearman, pearson = (None if np.isnan(r) else r for r in correlations([x for x, _ in both], [y for _, y in both]))
    return {
        "both_scored": len(both),
        "only_one_scored": sum((x.score is None) != (y.score is None) for x, y in zip(a, b)),
        "max_abs_diff": float(diffs.max()) if len(both) else None,
        "mean_abs_diff": float(diffs.mean()) if len(both) else None,
        "spearman": spearman,
        "pearson": pearson,
        "kept_pairs_differ": sum(_kept(x) != _kept(y) for x, y in zip(a, b)),
    }


def run_pipeline(name, folder, backend, threads, sources, summaries, batch_size):
    """Scores every pair with one pipeline; returns (results, seconds spent scoring). One untimed
    call on the first pair comes first (lazy weight paging, ONNX Runtime's weight pre-packing)."""
    from tqdm import tqdm

    from quals_fast import QualsScorer

    scorer = QualsScorer(folder, backend=backend, backend_options={"threads": threads})
    scorer.score(sources[:1], summaries[:1])
    results = []
    start = time.perf_counter()
    with tqdm(total=len(sources), desc=name, unit="summary") as bar:
        for res in scorer.iter_scores(sources, summaries, batch_size=batch_size):
            results.append(res)
            bar.update(1)
    return results, time.perf_counter() - start


def _fmt(v, spec="%.3g"):
    return "-" if v is None else spec % v


def markdown(report) -> str:
    lines = ["| comparison | both scored | only one scored | max abs diff | mean abs diff | Spearman | Pearson "
             "| kept pairs differ |", "|---|---|---|---|---|---|---|---|"]
    for name, c in report["comparisons"].items():
        lines.append("| %s | %d / %d | %d | %s | %s | %s | %s | %d |" % (
            name, c["both_scored"], report["n"], c["only_one_scored"], _fmt(c["max_abs_diff"]),
            _fmt(c["mean_abs_diff"]), _fmt(c["spearman"], "%.4f"), _fmt(c["pearson"], "%.4f"),
            c["kept_pairs_differ"]))
    lines += ["", "| pipeline | seconds | seconds per summary | summaries scored |", "|---|---|---|---|"]
    for name, p in report["pipelines"].items():
        lines.append("| %s | %.1f | %.2f | %d |" % (name, p["seconds"], p["seconds"] / report["n"], p["scored"]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="news pairs to score (default %(default)s)")
    p.add_argument("--model", default=None, help="QAGen folder with a tokenizer (default: the embedded model)")
    p.add_argument("--cache-dir", default=str(REPO / "runs" / "bench-models"),
                   help="where the ONNX exports are kept (default: runs/bench-models)")
    p.add_argument("--output", default=str(REPO / "runs" / "onnx_int8_agreement.json"),
                   help="JSON report (default: runs/onnx_int8_agreement.json)")
    p.add_argument("--data-dir", default=str(DATA_DIR), help="folder holding news/ (default: ../shared/data)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every backend (default: all cores, %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="summaries per model batch (default %(default)s)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from quals_fast.bench_cli import load_news_pairs
    from quals_fast.checkpoint import ONNX_MANIFEST, default_model_dir
    from quals_fast.export import cached_export

    if not (Path(args.data_dir) / "news").is_dir():
        raise SystemExit("no news/ folder in %s (pass --data-dir)" % args.data_dir)
    model = Path(args.model) if args.model else default_model_dir()
    pairs = load_news_pairs(args.n, args.data_dir)
    if len(pairs) < args.n:
        raise SystemExit("only %d news pairs available, asked for %d" % (len(pairs), args.n))
    sources, summaries = [p["source"] for p in pairs], [p["summary"] for p in pairs]
    log = lambda msg: print("[agreement] " + msg, file=sys.stderr, flush=True)  # noqa: E731

    folders = {}
    for name, int8 in PIPELINES.items():
        folders[name] = model if int8 is None else cached_export(model, args.cache_dir, int8=int8, log=log)
    results = {}
    report = {"n": args.n, "model": _rel(model), "threads": args.threads, "batch_size": args.batch_size,
              "pairs": ["%s:%s" % (p["dataset"], p["id"]) for p in pairs], "pipelines": {}, "comparisons": {}}
    for name, folder in folders.items():
        backend = "torch" if PIPELINES[name] is None else "onnx"
        results[name], seconds = run_pipeline(name, folder, backend, args.threads, sources, summaries,
                                              args.batch_size)
        entry = {"folder": _rel(folder), "seconds": seconds, "scored": sum(r.score is not None for r in results[name]),
                 "scores": [r.score for r in results[name]]}
        if backend == "onnx":
            manifest = json.loads((Path(folder) / ONNX_MANIFEST).read_text(encoding="utf-8"))
            entry["export_validation"] = manifest.get("validation")
            entry["versions"] = manifest.get("versions")
        report["pipelines"][name] = entry
    for a, b in COMPARISONS:
        report["comparisons"]["%s vs %s" % (a, b)] = compare(results[a], results[b])

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(report))
    print("\nwrote %s" % _rel(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
