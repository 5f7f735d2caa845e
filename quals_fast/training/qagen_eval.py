"""Held-out quality of a QAGen model on SQuAD dev-b (never trained on), with QUALS's own generation.

For evenly spaced dev-b paragraphs the model generates as QUALS runs it (diverse beam search, 60
hypotheses) and we report: the share of hypotheses that split into exactly (question, answer), the
share whose answer is a verbatim (lower-cased) span of the paragraph (the paragraph as QUALS's
filter searches it: see `quals_fast.qagen.answer_search_text`), and the corpus BLEU of each
paragraph's best hypothesis's question against the paragraph's gold questions, and the share of
questions that repeat themselves (a word twice in a row or a word pair twice: "the oldest known
known known"), beside the same share among the gold questions."""
import argparse
import json
from pathlib import Path

from quals_fast.training.qagen_data import VALID_FILE, read_squad


def _bleu(hypotheses, references):
    import sacrebleu

    # sacrebleu wants the same number of reference streams per sentence; repeating a reference
    # changes neither clipped counts nor the closest reference length.
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(hypotheses, streams, lowercase=True).score


def repeats(text: str) -> bool:
    """Whether `text` has a word twice in a row or a word pair twice: the loops a weak decoder
    falls into, which gold SQuAD questions seldom have."""
    words = [w for w in (t.strip(".,;:!?'\"") for t in text.lower().split()) if w]
    pairs = list(zip(words, words[1:]))
    return any(a == b for a, b in pairs) or len(set(pairs)) < len(pairs)


def print_report(result: dict, output=None) -> None:
    """Print an evaluation's JSON and, when asked, keep it in a file (the model card quotes it)."""
    text = json.dumps(result, indent=2)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
    print(text)


def evaluate_qagen(model_dir, data_dir, paragraphs=100, batch_size=4, max_source_tokens=512, progress=True):
    from tqdm.auto import tqdm

    from quals_fast.qagen import QAGen

    qagen = QAGen.load(model_dir)
    raw = read_squad(Path(data_dir) / VALID_FILE)
    step = max(1, len(raw) // paragraphs)
    picked = raw[::step][:paragraphs]
    n_hyp = n_split = n_span = n_rep = 0
    best_questions, gold = [], []
    bar = tqdm(total=len(picked), desc="eval-qagen", disable=not progress)
    for start in range(0, len(picked), batch_size):
        chunk = picked[start: start + batch_size]
        ids = [qagen.encode_text(context, max_source_tokens)[0] for context, _ in chunk]
        for (context, qas), hyps in zip(chunk, qagen.generate_ids(ids)):
            context = qagen.answer_search_text(context)
            texts = [qagen.decode(h.tokens) for h in hyps]
            parts = [t.split(qagen.separator) for t in texts]
            n_hyp += len(texts)
            n_split += sum(len(p) == 2 for p in parts)
            n_span += sum(len(p) == 2 and p[1].strip() != "" and p[1].strip().lower() in context.lower() for p in parts)
            n_rep += sum(repeats(p[0]) for p in parts)
            best_questions.append(parts[0][0].strip())
            gold.append([q for q, _ in qas])
        bar.update(len(chunk))
    bar.close()
    return {
        "paragraphs": len(picked),
        "hypotheses": n_hyp,
        "split_share": n_split / n_hyp,
        "answer_span_share": n_span / n_hyp,
        "question_bleu": _bleu(best_questions, gold),
        "question_repeat_share": n_rep / n_hyp,
        "gold_question_repeat_share": sum(repeats(q) for g in gold for q in g) / sum(len(g) for g in gold),
        "examples": [{"question": q, "gold": g[:2]} for q, g in zip(best_questions[:5], gold[:5])],
    }


def register_cli(subparsers):
    p = subparsers.add_parser("eval-qagen", help="held-out quality of a QAGen model on SQuAD dev-b",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="QAGen model folder (default: the embedded model)")
    p.add_argument("--data-dir", default="../shared/data/squad", help="folder holding %s" % VALID_FILE)
    p.add_argument("--paragraphs", type=int, default=100, help="evenly spaced dev-b paragraphs (default 100)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--output", default=None, help="also write the figures to this JSON file")
    p.add_argument("--no-progress", action="store_true")

    def run(args):
        if args.paragraphs < 1:
            raise SystemExit("eval-qagen: --paragraphs must be >= 1")
        result = evaluate_qagen(args.model, args.data_dir, args.paragraphs, args.batch_size,
                                progress=not args.no_progress)
        print_report(result, args.output)
        return 0

    p.set_defaults(func=run)
    return p
