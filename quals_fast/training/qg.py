"""Train the QAGS question generator: a MiniLM-initialised BART mapping `answer [qsep] text` to a
question, on SQuAD v1.1 with QAGen's recipe (same warm start, data files, loop, checkpoints).

The recipe IS `train_qagen`'s: only the examples differ (grouped by (context, answer) so that
the encoder still runs once per distinct input).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from . import qagen as _qagen
from . import qagen_data as _data
from .qagen import TrainQAGenOptions
from .warmstart import EOS_ID, SEPARATOR_TOKEN


def build_qg_paragraphs(files, tokenizer, sep_id, max_source_len, max_target_len, max_paragraphs=0):
    """One `Paragraph` per distinct (context, answer): source = answer [qsep] context [eos]
    (the context truncated so the whole fits), targets = its questions."""
    raw = _data.first_paragraphs(files, max_paragraphs, _data.read_squad)
    ctx = _data._ids(tokenizer, [c for c, _ in raw])
    answers = _data._ids(tokenizer, [a.strip() for _, qas in raw for _, a in qas])
    questions = _data._ids(tokenizer, [q.strip() for _, qas in raw for q, _ in qas])
    out, k = [], 0
    for (_, qas), c in zip(raw, ctx):
        by_answer = {}
        for _ in qas:
            a = tuple(answers[k])
            if a not in by_answer:
                source = (list(a) + [sep_id] + c)[: max_source_len - 1] + [EOS_ID]
                by_answer[a] = _data.Paragraph(source, [])
            by_answer[a].targets.append(questions[k][: max_target_len - 1])
            k += 1
        out.extend(by_answer.values())
    return out


# Short inputs, subject and news questions, renamed copies and entity infilling are QAGen augmentations
# (they hold QAGen targets or train its decoder), so QG runs without them.
QG_RECIPE = dataclasses.replace(_qagen.QAGEN_RECIPE, build_paragraphs=build_qg_paragraphs, build_short_paragraphs=None,
                                build_subject_paragraphs=None, build_renamed_paragraphs=None,
                                build_infilling_paragraphs=None, build_news_paragraphs=None)


def train_qg(options: TrainQAGenOptions) -> dict:
    summary = _qagen.train_qagen(options, QG_RECIPE)
    best = Path(options.output_dir) / "best" / "config.json"
    if best.is_file():
        # Tell loaders which model this is and how its input is laid out.
        cfg = json.loads(best.read_text())
        cfg.update(qg_separator_token=SEPARATOR_TOKEN, quals_fast_task="qags-question-generation",
                   qg_input_format="answer tokens + [qsep] + text tokens + [SEP] (eos), no bos")
        best.write_text(json.dumps(cfg, indent=2))
    return summary


def register_recipe_cli(subparsers, name: str, help_: str, doc: str, run) -> argparse.ArgumentParser:
    """A sub-command with train-qagen's flags (one per TrainQAGenOptions field) that runs `run`."""
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    base = _qagen.register_cli(scratch)
    p = subparsers.add_parser(name, parents=[base], add_help=False, help=help_, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def _run(args) -> int:
        kwargs = {f: getattr(args, f) for f in TrainQAGenOptions.__dataclass_fields__ if hasattr(args, f)}
        try:
            opts = TrainQAGenOptions(**kwargs).validate()
        except ValueError as exc:
            raise SystemExit(f"{name}: {exc}")
        print(json.dumps(run(opts), indent=2))
        return 0

    p.set_defaults(func=_run)
    return p


def register_cli(subparsers):
    return register_recipe_cli(subparsers, "train-qg", "train the QAGS question generator (MiniLM warm start, SQuAD)",
                               __doc__, train_qg)
