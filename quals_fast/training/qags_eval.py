"""Held-out quality of the QAGS reference's trained models on SQuAD dev-b (never trained on).

For evenly spaced dev-b paragraphs, run each model as the QAGS reference runs it:
  - question generator: one question per distinct gold answer, from (answer, paragraph), 10 beams;
    reported as corpus BLEU against the gold questions for that answer, plus the share of distinct
    questions (an input-blind generator writes the same few questions whatever the answer);
  - QA model: the gold questions on their paragraph (windows, "no answer" allowed); reported as
    SQuAD exact match and token F1 against the first gold answer.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .qagen_data import VALID_FILE, read_squad
from .qagen_eval import _bleu, print_report


def _pick(data_dir, paragraphs: int):
    raw = read_squad(Path(data_dir) / VALID_FILE)
    step = max(1, len(raw) // paragraphs)
    return raw[::step][:paragraphs]


def evaluate_qg(model_dir, picked, device="cpu") -> dict:
    from quals_fast.reference.qags import QuestionGenerator

    answers, contexts, gold = [], [], []
    for context, qas in picked:
        by_answer: dict[str, list[str]] = {}
        for question, answer in qas:
            by_answer.setdefault(answer.strip(), []).append(question)
        for answer, questions in by_answer.items():
            answers.append(answer)
            contexts.append(context)
            gold.append(questions)
    generated = QuestionGenerator(model_dir, device=device).generate(answers, contexts)
    return {
        "answers": len(answers),
        "question_bleu": _bleu(generated, gold),
        "distinct_question_share": len(set(q.lower() for q in generated)) / max(1, len(generated)),
        "examples": [{"answer": a, "question": q, "gold": g[0]}
                     for a, q, g in list(zip(answers, generated, gold))[:5]],
    }


def evaluate_qa(model_dir, picked, device="cpu") -> dict:
    from quals_fast.reference.qags import ExtractiveQA, normalize_answer, token_f1

    questions = [q for _, qas in picked for q, _ in qas]
    contexts = [c for c, qas in picked for _ in qas]
    gold = [a for _, qas in picked for _, a in qas]
    predicted = ExtractiveQA(model_dir, device=device).answer(questions, contexts)
    n = max(1, len(gold))
    return {
        "questions": len(gold),
        "exact_match": 100.0 * sum(normalize_answer(p) == normalize_answer(g) for p, g in zip(predicted, gold)) / n,
        "f1": 100.0 * sum(token_f1(p, g) for p, g in zip(predicted, gold)) / n,
        "no_answer_share": sum(p.strip() == "" for p in predicted) / n,
    }


def evaluate_qags_models(qg_dir=None, qa_dir=None, data_dir="../shared/data/squad", paragraphs=25, device="cpu") -> dict:
    if qg_dir is None and qa_dir is None:
        raise ValueError("give a question generator (qg_dir), a QA model (qa_dir) or both")
    picked = _pick(data_dir, paragraphs)
    out = {"paragraphs": len(picked)}
    if qg_dir is not None:
        out["qg"] = evaluate_qg(qg_dir, picked, device)
    if qa_dir is not None:
        out["qa"] = evaluate_qa(qa_dir, picked, device)
    return out


def register_cli(subparsers):
    p = subparsers.add_parser("eval-qags-models", help="held-out quality of the QAGS question generator and QA model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qg-model", default=None, help="question generator folder (quals-fast train-qg)")
    p.add_argument("--qa-model", default=None, help="QA model folder (quals-fast train-qa)")
    p.add_argument("--data-dir", default="../shared/data/squad", help="folder holding %s" % VALID_FILE)
    p.add_argument("--paragraphs", type=int, default=25, help="evenly spaced dev-b paragraphs (default 25)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="also write the figures to this JSON file")

    def run(args):
        if args.paragraphs < 1:
            raise SystemExit("eval-qags-models: --paragraphs must be >= 1")
        try:
            result = evaluate_qags_models(args.qg_model, args.qa_model, args.data_dir, args.paragraphs, args.device)
        except ValueError as exc:
            raise SystemExit("eval-qags-models: %s" % exc)
        print_report(result, args.output)
        return 0

    p.set_defaults(func=run)
    return p
