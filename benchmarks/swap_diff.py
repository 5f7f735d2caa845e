"""Paired comparison of two `quals-fast eval-swaps --output` files scored on the same pairs.

    python benchmarks/swap_diff.py BASELINE.json CANDIDATE.json
    python benchmarks/swap_diff.py B_SET1.json,B_SET2.json C_SET1.json,C_SET2.json

A side may name several files (comma-separated), one per decision set: their pairs are pooled,
and a pair id met twice is refused, since it would count one pair twice.

Over the pairs both models scored (each gives the faithful and the swapped summary a QUALS
score), per pair the candidate's gap (faithful − swapped) minus the baseline's: their mean, its
standard error, and how many standard errors it lies from zero. The decision rules in
docs/QAGEN_EXPERIMENTS.md ask for more than two."""
import argparse
import json
import math


def gaps(paths):
    out, seen = {}, set()
    for path in paths.split(","):
        for it in json.load(open(path, encoding="utf-8"))["items"]:
            if it["id"] in seen:
                raise SystemExit(f"pair {it['id']} appears twice in {paths}")
            seen.add(it["id"])
            if it["faithful_score"] is not None and it["swapped_score"] is not None:
                out[it["id"]] = it["faithful_score"] - it["swapped_score"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    args = ap.parse_args(argv)
    a, b = gaps(args.baseline), gaps(args.candidate)
    both = [k for k in a if k in b]
    if len(both) < 2:
        raise SystemExit("fewer than two pairs scored by both")
    d = [b[k] - a[k] for k in both]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    for name, g in (("baseline", a), ("candidate", b)):
        v = list(g.values())
        print(f"{name:9s}: {sum(x > 0 for x in v) / len(v):.1%} ranked right ({len(v)} scored), mean gap {sum(v) / len(v):+.3f}")
    if se == 0:
        raise SystemExit(f"the two sides give every one of {len(both)} pairs the same gap difference {mean:+.3f}: nothing to compare")
    print(f"paired (candidate - baseline) over {len(both)} pairs: {mean:+.3f} +- {se:.3f} ({mean / se:+.1f} SE)")


if __name__ == "__main__":
    main()
