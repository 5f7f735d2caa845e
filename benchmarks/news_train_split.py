"""Write the news articles a QAGen run may train on (`train-qagen --news-questions`), and check them.

    python benchmarks/news_train_split.py OUT.jsonl [--first 500]

The first `--first` lines of ../shared/data/news/xsum_1000.jsonl, less every article that shares
text with a QAGS-XSUM article (../shared/data/qags/mturk_xsum.jsonl), since eval-correlation scores
those. The decision sets of docs/QAGEN_EXPERIMENTS.md are drawn from xsum_1000 too; a candidate
trained on this file is decided only on pairs from articles after `--first` (session 37's W2)."""
import argparse
import hashlib
import json
import re
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# 8-word shingles every 5 words; more than 3 shared marks the same article (QAGS lower-cases its copy).
SHINGLE, STRIDE, SHARED_SHINGLES = 8, 5, 3


def shingles(text: str) -> set:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + SHINGLE]) for i in range(0, max(1, len(words) - SHINGLE), STRIDE)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--first", type=int, default=500)
    ap.add_argument("--news", type=Path, default=SHARED / "news" / "xsum_1000.jsonl")
    ap.add_argument("--qags", type=Path, default=SHARED / "qags" / "mturk_xsum.jsonl")
    args = ap.parse_args(argv)
    qags = set()
    for line in args.qags.read_text(encoding="utf-8").splitlines():
        qags |= shingles(json.loads(line)["article"])
    rows = [json.loads(line) for line in args.news.read_text(encoding="utf-8").splitlines()[: args.first]]
    keep = [r for r in rows if len(shingles(r["source"]) & qags) <= SHARED_SHINGLES]
    data = "".join(json.dumps({"id": r["id"], "source": r["source"], "summary": r["summary"]}) + "\n" for r in keep)
    args.out.write_text(data, encoding="utf-8")
    print(f"{args.out}: {len(keep)} of the first {len(rows)} articles ({len(rows) - len(keep)} shared with QAGS-XSUM); "
          f"sha256 {hashlib.sha256(data.encode()).hexdigest()[:8]}")


if __name__ == "__main__":
    main()
