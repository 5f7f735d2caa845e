"""Rebuild the held-out news decision sets X1, X2 and X3 from pools P, R and X, and check them.

    python benchmarks/decision_sets.py POOLS_DIR

POOLS_DIR holds the three pools as `quals-fast eval-swaps --save-pairs` wrote them (commands in
docs/QAGEN_EXPERIMENTS.md, sessions 16, 20 and 28; all on ../shared/data/news/xsum_1000.jsonl):

    eval-swaps --news-file N --corruption swap --faithful article --pairs 1000 --save-pairs P
    eval-swaps --news-file N --corruption substitute --faithful article --pairs 1000 --save-pairs R
    eval-swaps --news-file N --corruption substitute --faithful article --article-skip 1 --pairs 1000 --save-pairs X

X's pairs whose faithful sentence (same article) is one of P's or R's are dropped, since models
have been scored on those sentences; X1, X2 and X3 are the kept pairs 0-299, 300-599 and 600 on,
written beside the pools. The decision rules name the sets by sha256, so a rebuild that differs
from the recorded hashes stops here rather than deciding on other pairs."""
import argparse
import hashlib
import json
from pathlib import Path

# sha256 prefixes recorded when each set was fixed (sessions 28 and 33)
RECORDED = {"P": "72fb454c", "R": "a55891ba", "X": "076a331e", "X1": "46ad8491", "X2": "cd51dfd4",
            "X3": "d918a392"}
SPLITS = {"X1": slice(0, 300), "X2": slice(300, 600), "X3": slice(600, None)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _article(pair_id: str) -> str:
    return pair_id.rsplit("-sentence", 1)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pools", type=Path)
    args = ap.parse_args(argv)
    raw = {name: (args.pools / name).read_bytes() for name in "PRX"}
    pools = {name: json.loads(data) for name, data in raw.items()}
    seen = {(_article(p["id"]), p["faithful"]) for p in pools["P"] + pools["R"]}
    keep = [p for p in pools["X"] if (_article(p["id"]), p["faithful"]) not in seen]
    print(f"P {len(pools['P'])}, R {len(pools['R'])}, X {len(pools['X'])} pairs; {len(keep)} of X kept")
    digests = {name: _digest(data) for name, data in raw.items()}
    for name, part in SPLITS.items():
        text = json.dumps(keep[part], indent=1) + "\n"
        (args.pools / name).write_text(text, encoding="utf-8")
        digests[name] = _digest(text.encode("utf-8"))
        print(f"{name}: {len(keep[part])} pairs, {keep[part][0]['id']} ... {keep[part][-1]['id']}")
    wrong = []
    for name, digest in digests.items():
        ok = digest.startswith(RECORDED[name])
        print(f"{name} sha256 {digest[:16]}... {'as recorded' if ok else 'DIFFERS from ' + RECORDED[name]}")
        wrong += [] if ok else [name]
    if wrong:
        raise SystemExit(f"not the recorded sets: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
