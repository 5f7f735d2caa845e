"""How much does the diversity penalty in QUALS's summary-side term move its human correlation?

    python benchmarks/summary_side.py CORR_DIR [--model DIR] [--data-dir ../shared/data/qags]

QUALS subtracts, for every kept QA pair, a score given the summary from the teacher-forced score
given the source. The reference takes the summary-side score from the generation itself, and
diverse beam search stores its scores with the diversity penalty added (0.5 per earlier group that
chose the same token at that step; ../shared/oracle/README.md), so pairs from late groups look less
likely given the summary than the model finds them. The paper's formula is the model's own
log-likelihood on both sides. This script re-scores the summary side of an `eval-correlation`
output (CORR_DIR, which records every kept pair's tokens) by teacher forcing, with the model that
produced it, and prints both Pearson and Spearman correlations with the human score side by side.
quals-fast keeps the reference's definition; this measures what the other one would change."""
import argparse
import json
from pathlib import Path

import numpy as np

from quals_fast import QualsScorer
from quals_fast.evaluation import load_qags, pearson, spearman
from quals_fast.rescoring import rescore

DATASETS = {"QAGS-CNNDM": "mturk_cnndm", "QAGS-XSUM": "mturk_xsum"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corr_dir", type=Path)
    ap.add_argument("--model", default=None, help="the model CORR_DIR was scored with (default: the embedded one)")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data/qags"))
    args = ap.parse_args()
    scorer = QualsScorer(args.model)
    q = scorer.qagen
    print("| dataset | summaries | Pearson / Spearman, reference (generation scores) | Pearson / Spearman, summary side teacher-forced |")
    print("|---|---|---|---|")
    for name, stem in DATASETS.items():
        items = load_qags(args.data_dir / f"{stem}.jsonl")
        lines = [json.loads(x) for x in (args.corr_dir / f"{stem}.scores.jsonl").read_text(encoding="utf-8").splitlines()]
        if len(lines) != len(items):
            raise SystemExit(f"{args.corr_dir}: {len(lines)} lines for {len(items)} {name} items")
        kept = [(line, summary) for (_, summary, _), line in zip(items, lines) if line.get("qa")]
        summary_ids = [q.encode_text(summary, q.spec.max_source_positions)[0] for _, summary in kept]
        forced = rescore(q.backend, summary_ids, [[p["tokens"] for p in line["qa"]] for line, _ in kept],
                         scorer.rescoring)
        human = np.array([line["human"] for line, _ in kept])
        reference = np.array([line["quals"] for line, _ in kept])
        paper = np.array([np.mean([p["source_score"] - t.score for p, t in zip(line["qa"], scores)])
                          for (line, _), scores in zip(kept, forced)])
        print(f"| {name} | {len(kept)} | {100 * pearson(reference, human):.1f} / {100 * spearman(reference, human):.1f} "
              f"| {100 * pearson(paper, human):.1f} / {100 * spearman(paper, human):.1f} |")


if __name__ == "__main__":
    main()
