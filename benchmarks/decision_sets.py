"""Rebuild the held-out news decision sets X1, X2, X3 (and Y1, Y2, Z1, Z2, Z3, W2 where pools Y,
Z and W are there) from pools P, R, X (and Y, Z), and check them.

    python benchmarks/decision_sets.py POOLS_DIR

POOLS_DIR holds the pools as `quals-fast eval-swaps --save-pairs` wrote them (commands in
docs/QAGEN_EXPERIMENTS.md, sessions 16, 20 and 28; all on ../shared/data/news/xsum_1000.jsonl):

    eval-swaps --news-file N --corruption swap --faithful article --pairs 1000 --save-pairs P
    eval-swaps --news-file N --corruption substitute --faithful article --pairs 1000 --save-pairs R
    eval-swaps --news-file N --corruption substitute --faithful article --article-skip 1 --pairs 1000 --save-pairs X
    eval-swaps --news-file N --corruption substitute --faithful article --article-skip 2 --pairs 1000 --save-pairs Y
    eval-swaps --news-file N --corruption substitute --faithful article --article-skip 3 --pairs 1000 --save-pairs Z
    eval-swaps --news-file N --corruption substitute --faithful article --article-skip 4 --pairs 1000 --save-pairs W

X's pairs whose faithful sentence (same article) is one of P's or R's are dropped, since models
have been scored on those sentences; X1, X2 and X3 are the kept pairs 0-299, 300-599 and 600 on,
written beside the pools. Y (session 34, after X3 was spent) gives Y1 and Y2, its kept pairs 0-299
and 300-599, once the pairs whose faithful sentence is one of P's, R's or X's are dropped; Z
(session 35, with Y2 set aside for a registered candidate) gives Z1 and Z2 likewise, leaving out
every sentence P to Y offered; Z3 (session 36) is Z's kept pairs from 600 on. W (session 37) gives
W2, its kept pairs (leaving out what P to Z offered) from articles 500 on, which a model trained on
benchmarks/news_train_split.py's articles (the first 500) has not read. The decision rules name the sets by sha256, so a rebuild that differs
from the recorded hashes stops here rather than deciding on other pairs."""
import argparse
import hashlib
import json
from pathlib import Path

# sha256 prefixes recorded when each set was fixed (sessions 28, 33, 34, 35, 36 and 37)
RECORDED = {"P": "72fb454c", "R": "a55891ba", "X": "076a331e", "X1": "46ad8491", "X2": "cd51dfd4",
            "X3": "d918a392", "Y": "6984de8f", "Y1": "17d403af", "Y2": "f8966fdd",
            "Z": "262ff8f4", "Z1": "f38d21f6", "Z2": "92b4bf85", "Z3": "f9cb92aa", "W": "549f1f32", "W2": "a087bdf5"}
# Articles from this index on are the ones benchmarks/news_train_split.py (--first 500) leaves out.
NEWS_TRAIN_ARTICLES = 500
SPLITS = {"X": {"X1": slice(0, 300), "X2": slice(300, 600), "X3": slice(600, None)},
          "Y": {"Y1": slice(0, 300), "Y2": slice(300, 600)},
          "Z": {"Z1": slice(0, 300), "Z2": slice(300, 600), "Z3": slice(600, None)},
          "W": {"W2": lambda kept: [p for p in kept if _article_index(p["id"]) >= NEWS_TRAIN_ARTICLES]}}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _article(pair_id: str) -> str:
    return pair_id.rsplit("-sentence", 1)[0]


def _article_index(pair_id: str) -> int:
    return int(_article(pair_id).rsplit("-", 1)[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pools", type=Path)
    args = ap.parse_args(argv)
    # each later pool is read only with every earlier one, whose sentences it leaves out
    names = "PRX" + "".join(n for n in "YZW" if (args.pools / n).is_file())
    if names not in ("PRX", "PRXY", "PRXYZ", "PRXYZW"):
        raise SystemExit(f"each of pools Y, Z, W needs the ones before it beside it in {args.pools}")
    raw = {name: (args.pools / name).read_bytes() for name in names}
    pools = {name: json.loads(data) for name, data in raw.items()}
    digests = {name: _digest(data) for name, data in raw.items()}
    seen = {(_article(p["id"]), p["faithful"]) for p in pools["P"] + pools["R"]}
    for pool in names[2:]:
        keep = [p for p in pools[pool] if (_article(p["id"]), p["faithful"]) not in seen]
        print(f"{pool}: {len(pools[pool])} pairs, {len(keep)} kept")
        for name, part in SPLITS[pool].items():
            pairs = part(keep) if callable(part) else keep[part]
            text = json.dumps(pairs, indent=1) + "\n"
            (args.pools / name).write_text(text, encoding="utf-8")
            digests[name] = _digest(text.encode("utf-8"))
            print(f"{name}: {len(pairs)} pairs, {pairs[0]['id']} ... {pairs[-1]['id']}")
        # a later pool's sets also leave out every sentence the earlier pools offered
        seen |= {(_article(p["id"]), p["faithful"]) for p in pools[pool]}
    wrong = []
    for name, digest in digests.items():
        ok = digest.startswith(RECORDED[name])
        print(f"{name} sha256 {digest[:16]}... {'as recorded' if ok else 'DIFFERS from ' + RECORDED[name]}")
        wrong += [] if ok else [name]
    if wrong:
        raise SystemExit(f"not the recorded sets: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
