"""Agreement with human judgments: QUALS against the QAGS crowd labels (Wang et al. 2020).

A summary's human score is the mean over its sentences of the majority of the three yes/no votes
("is it supported by the article?"). Per-item results go to a JSONL file as they are scored, so a
long run resumes where it stopped. Each line also names its item (its line in the QAGS file) and
holds the QA pairs QUALS kept, with the per-token log-probabilities of both sides."""
import argparse
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

DATASETS = {"QAGS-CNNDM": "mturk_cnndm.jsonl", "QAGS-XSUM": "mturk_xsum.jsonl"}
# Pearson correlation the QAGS paper reports for QAGS itself (Table 1), the bar we compare with.
QAGS_PAPER_PEARSON = {"QAGS-CNNDM": 54.5, "QAGS-XSUM": 17.5}


# The model-free baseline beside QUALS: on QAGS-CNNDM, how much of a summary is copied from its
# article already says much about whether people find it supported; a learnt metric is worth
# reporting only next to that, and by what it adds to it (the partial correlation given the overlap).
OVERLAP_N = 3


def ngram_overlap(article: str, summary: str, n: int = OVERLAP_N) -> float:
    """Share of the summary's word n-grams (lower-cased letters and digits) that occur in the
    article; a summary shorter than n words counts as one n-gram of its length."""
    a = re.findall(r"[a-z0-9]+", article.lower())
    s = re.findall(r"[a-z0-9]+", summary.lower())
    if not s:
        raise ValueError("ngram_overlap: the summary has no words")
    n = min(n, len(s))
    grams = set(zip(*(a[i:] for i in range(n))))
    wanted = list(zip(*(s[i:] for i in range(n))))
    return sum(g in grams for g in wanted) / len(wanted)


def human_score(sentences: Sequence[dict]) -> float:
    votes = [sum(r["response"] == "yes" for r in s["responses"]) * 2 > len(s["responses"]) for s in sentences]
    return float(np.mean(votes))


def load_qags(path) -> List[Tuple[str, str, float]]:
    """(article, summary, human score) per line; the summary is its sentences joined by spaces."""
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            sents = rec["summary_sentences"]
            items.append((rec["article"], " ".join(s["sentence"] for s in sents), human_score(sents)))
    return items


def _ranks(x: np.ndarray) -> np.ndarray:
    # Average ranks for ties, as Spearman's coefficient defines them.
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y) -> float:
    return pearson(_ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64)))


def partial_pearson(x, y, control) -> float:
    """Pearson correlation of x and y once what a straight line in `control` explains is taken out
    of both: what x says about y beyond `control`."""
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, control))
    if len(x) < 3:
        return float("nan")
    design = np.column_stack([z, np.ones_like(z)])

    def residual(v):
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    return pearson(residual(x), residual(y))


def evaluate(scorer, data_dir, output_dir, limit=None, batch_size=8, progress=True) -> Dict[str, dict]:
    """Scores every dataset (the first `limit` items of each) and returns the correlation table."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, filename in DATASETS.items():
        items = load_qags(Path(data_dir) / filename)[:limit]
        out_path = output_dir / (Path(filename).stem + ".scores.jsonl")
        done = []
        if out_path.exists():
            with open(out_path, encoding="utf-8") as f:
                done = [json.loads(l) for l in f if l.endswith("\n")]
        todo = items[len(done):]
        with open(out_path, "a", encoding="utf-8") as f:
            results = scorer.iter_scores([a for a, _, _ in todo], [s for _, s, _ in todo], batch_size=batch_size,
                                         on_error="report", progress=progress) if todo else []
            for index, ((_, _, human), res) in enumerate(zip(todo, results), start=len(done)):
                detail = res.to_dict()
                # "qa" keeps the kept pairs with their per-token log-probs, so that a surprising score can
                # be read back (and split into question and answer parts) without scoring again.
                rec = {"item": index, "human": human, "quals": res.score, "pairs": len(res.pairs), "error": res.error,
                       "reason": res.reason, "num_candidates": res.num_candidates,
                       "source_truncated": res.source_truncated, "qa": detail["pairs"]}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                done.append(rec)
        scored = [(it, r) for it, r in zip(items, done[: len(items)]) if r["quals"] is not None]
        q = [r["quals"] for _, r in scored]
        h = [r["human"] for _, r in scored]
        # on the same summaries as QUALS, so that the two columns compare like with like
        o = [ngram_overlap(article, summary) for (article, summary, _), _ in scored]
        table[name] = {"items": len(items), "scored": len(scored), "pearson": pearson(q, h), "spearman": spearman(q, h),
                       "overlap_pearson": pearson(o, h), "overlap_spearman": spearman(o, h),
                       "pearson_beyond_overlap": partial_pearson(q, h, o)}
    return table


def format_table(table: Dict[str, dict], model_name: str) -> str:
    lines = ["| dataset | items | with a QUALS score | Pearson (QUALS, %s) | Spearman | "
             "Pearson (word %d-gram overlap with the article, no model) | Spearman | "
             "QUALS beyond the overlap (partial Pearson) | QAGS paper's Pearson |"
             % (model_name, OVERLAP_N),
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append("| %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            name, row["items"], row["scored"], 100 * row["pearson"], 100 * row["spearman"],
            100 * row["overlap_pearson"], 100 * row["overlap_spearman"], 100 * row["pearson_beyond_overlap"],
            QAGS_PAPER_PEARSON[name]))
    return "\n".join(lines)


def register_cli(subparsers):
    from quals_fast.score_cli import add_stage_flags, stage_options_from_args

    p = subparsers.add_parser("eval-correlation", help="correlation of QUALS with the QAGS human judgments",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="QAGen model folder (default: the embedded model)")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data", "qags"),
                   help="folder with mturk_cnndm.jsonl and mturk_xsum.jsonl (default: ../shared/data/qags)")
    p.add_argument("--output-dir", required=True, help="per-item scores (resumable) and table.md go here")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items of each dataset")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    add_stage_flags(p)

    def run(args):
        from quals_fast.scorer import QualsScorer

        for filename in DATASETS.values():
            if not (Path(args.data_dir) / filename).is_file():
                raise SystemExit("eval-correlation: %s not found in %s (pass --data-dir)" % (filename, args.data_dir))
        scorer = QualsScorer(args.model, backend=args.backend, device=args.device, **stage_options_from_args(args))
        table = evaluate(scorer, args.data_dir, args.output_dir, args.limit, args.batch_size, not args.no_progress)
        text = format_table(table, Path(str(scorer.qagen.checkpoint.path)).name)
        Path(args.output_dir, "table.md").write_text(text + "\n", encoding="utf-8")
        Path(args.output_dir, "table.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
        print(text)
        return 0

    p.set_defaults(func=run)
    return p
