"""Paired bootstrap of the change in human correlation between two `quals-fast eval-correlation`
output folders (two QAGen models on the same QAGS items).

    python benchmarks/correlation_diff.py OLD_DIR [NEW_DIR] [--draws DIR ...] [--resamples 2000] [--seed 0]

For each dataset: Pearson of each model over the summaries both scored, the difference (new −
old) and its 95% percentile interval, resampling summaries with replacement. The model card
quotes it when the default model changes. With one folder: that model's Pearson and its own 95%
interval (is it firmly below or above a published figure?).

The interval is the summaries' sampling noise only. It does not include training noise: the
default model's own recipe trained again with another seed moved QAGS-XSUM by −9.0 [−17.0, −0.7]
(docs/QAGEN_EXPERIMENTS.md, "Session 23"), so an interval that excludes zero does not by itself show that two
recipes differ.

`--draws` gives that training noise a number: the folders of one recipe trained with different
seeds (the default model's own recipe, say). The report then places the last folder named
(NEW_DIR, or OLD_DIR alone) in their spread, per dataset and for the two Pearsons summed: the
draws' mean and standard deviation, the candidate's distance from the mean in those standard
deviations, and its rank among them. A candidate inside the spread of the baseline's own seeds
has not shown that it agrees with people more or less than that recipe does."""
import argparse
import json
from pathlib import Path

import numpy as np

FILES = {"QAGS-CNNDM": "mturk_cnndm.scores.jsonl", "QAGS-XSUM": "mturk_xsum.scores.jsonl"}


def _scores(folder: Path, name: str) -> list:
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _bootstrap(n: int, stat, resamples: int, seed: int) -> list:
    """95% percentile interval of `stat(indices)` over resamples of range(n) with replacement."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(resamples)]
    return list(np.nanpercentile(values, [2.5, 97.5]))


def pearson_interval(rows: list, resamples: int, seed: int) -> dict:
    scored = [r for r in rows if r["quals"] is not None]
    human, q = np.array([r["human"] for r in scored]), np.array([r["quals"] for r in scored])
    return {"scored": len(scored), "pearson": np.corrcoef(q, human)[0, 1],
            "interval_95": _bootstrap(len(scored), lambda k: np.corrcoef(q[k], human[k])[0, 1], resamples, seed)}


def paired_difference(old: list, new: list, resamples: int, seed: int) -> dict:
    if len(old) != len(new):
        raise ValueError("the two folders scored different numbers of items (%d, %d)" % (len(old), len(new)))
    both = [i for i, (a, b) in enumerate(zip(old, new)) if a["quals"] is not None and b["quals"] is not None]
    human = np.array([old[i]["human"] for i in both])
    x, y = np.array([old[i]["quals"] for i in both]), np.array([new[i]["quals"] for i in both])
    interval = _bootstrap(len(both), lambda k: np.corrcoef(y[k], human[k])[0, 1] - np.corrcoef(x[k], human[k])[0, 1],
                          resamples, seed)
    old_r, new_r = np.corrcoef(x, human)[0, 1], np.corrcoef(y, human)[0, 1]
    return {"both_scored": len(both), "old_pearson": old_r, "new_pearson": new_r,
            "difference": new_r - old_r, "interval_95": interval}


def _pearson(rows: list) -> float:
    scored = [r for r in rows if r["quals"] is not None]
    return float(np.corrcoef([r["quals"] for r in scored], [r["human"] for r in scored])[0, 1])


def seed_spread(draws: list, candidate: dict) -> dict:
    """Where `candidate` ({dataset: rows}) falls among `draws` (a list of such dicts, one per seed
    of one recipe): per dataset and for the Pearsons summed over the datasets."""
    if len(draws) < 2:
        raise ValueError("a spread needs at least two draws, got %d" % len(draws))
    names = list(candidate)
    table = [{n: _pearson(d[n]) for n in names} for d in draws]
    mine = {n: _pearson(candidate[n]) for n in names}
    for t in table + [mine]:
        t["combined"] = sum(t[n] for n in names)
    out = {}
    for key in names + ["combined"]:
        values = np.array([t[key] for t in table])
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        out[key] = {"draws": values.tolist(), "mean": mean, "sd": sd, "candidate": mine[key],
                    "z": (mine[key] - mean) / sd if sd > 0 else float("nan"),
                    "draws_below_candidate": int((values < mine[key]).sum())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path, nargs="?")
    p.add_argument("--draws", type=Path, nargs="+", default=[],
                   help="eval-correlation folders of one recipe trained with different seeds")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = {name: (paired_difference(_scores(args.old, f), _scores(args.new, f), args.resamples, args.seed) if args.new
                  else pearson_interval(_scores(args.old, f), args.resamples, args.seed))
           for name, f in FILES.items()}
    if args.draws:
        last = args.new or args.old
        out["seed_spread"] = seed_spread([{n: _scores(d, f) for n, f in FILES.items()} for d in args.draws],
                                         {n: _scores(last, f) for n, f in FILES.items()})
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
