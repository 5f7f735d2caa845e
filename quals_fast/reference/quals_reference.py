"""QUALS the straightforward way: PyTorch + transformers, as the original fairseq-based code runs it.

This is a baseline and an oracle, not an engine. It deliberately keeps the original's costs:

* the summary is encoded once and its encoder output is COPIED to one row per beam (60 rows);
* the decoder is Hugging Face's own, with its own KV cache (``past_key_values``), reordered every
  step; the beam bookkeeping is fairseq's, in Python/NumPy (``search_reference.generate_reference``);
* selection is plain Python;
* rescoring re-encodes the source for EVERY kept pair (one full forward per pair).

None of it calls the C++ core, so agreement with ``QualsScorer`` checks the engine end to end.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from quals_fast.qagen import answer_search_text
from quals_fast.search_reference import generate_reference

ORIGINAL_SEPARATOR = " strutConnector"


@dataclass
class ReferencePair:
    question: str
    answer: str
    tokens: List[int]
    summary_score: float   # normalised generation score, diversity penalties included
    source_score: float    # mean teacher-forced log-prob given the source


@dataclass
class ReferenceResult:
    score: Optional[float]
    pairs: List[ReferencePair] = field(default_factory=list)


def load_reference_model(model_dir, device="cpu"):
    from transformers import AutoTokenizer, BartForConditionalGeneration

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = BartForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True,
                                                         dtype=torch.float32).eval().to(device)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return model, tok


def encode_text(tok, text: str, limit: int, eos_id: int, bos_id: Optional[int] = None) -> List[int]:
    # The original's truncation: keep `limit` tokens and make the last one EOS.
    ids = ([] if bos_id is None else [bos_id]) + tok(text, add_special_tokens=False)["input_ids"] + [eos_id]
    if len(ids) > limit:
        ids = ids[:limit]
        ids[-1] = eos_id
    return ids


def filter_pairs(texts: Sequence[str], summary: str, sep: str):
    """The original filter: (index, question, answer) of the candidates that split into exactly two
    parts and whose answer is verbatim (lower-cased, leading space kept) in the summary."""
    summary_lower = summary.lower()
    valid = []
    for i, text in enumerate(texts):
        parts = text.split(sep)
        if len(parts) == 2 and parts[1].lower() in summary_lower:
            valid.append((i, parts[0], parts[1]))
    return valid


def select_pairs(candidates: Sequence[Tuple[str, float]], summary: str, sep: str, max_pairs: int = 10,
                 strict_cap: bool = False):
    """The original selection (``filter_qas_dataset_lm_score``): filter, sort by unnormalised score,
    then take candidates round-robin over distinct answers; a repeated (answer, question) uses up its
    turn, and the limit is only checked before each round (``strict_cap`` checks it before every
    pair instead). Returns (candidate index, question, answer)."""
    valid = filter_pairs([text for text, _ in candidates], summary, sep)
    valid.sort(key=lambda v: candidates[v[0]][1], reverse=True)
    groups: Dict[str, list] = {}
    for v in valid:
        groups.setdefault(v[2].lower(), []).append(v)
    kept, seen = [], set()
    while len(kept) < max_pairs:
        added = False
        for answer_lower, members in groups.items():
            if strict_cap and len(kept) >= max_pairs:
                break
            if not members:
                continue
            v = members.pop(0)
            if (answer_lower, v[1].lower()) in seen:
                continue
            seen.add((answer_lower, v[1].lower()))
            kept.append(v)
            added = True
        if not added:
            break
    return kept


class _HFStepper:
    """step_fn for generate_reference over HF BART with a per-row KV cache.

    Beam rows whose prefixes are equal have equal decoder states, so the cache row that a new row
    continues is the old row of the same input whose prefix is the new prefix minus its last token."""

    def __init__(self, model, input_ids: List[List[int]], num_beams: int, pad_id: int):
        self.model = model
        self.K = num_beams
        width = max(len(x) for x in input_ids)
        ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
        for i, x in enumerate(input_ids):
            ids[i, : len(x)] = torch.tensor(x)
        mask = ids.ne(pad_id).long()
        device = next(model.parameters()).device
        with torch.inference_mode():
            hidden = model.model.encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        # The original copies the encoder output per beam (fairseq's reorder_encoder_out).
        rows = torch.arange(len(input_ids), device=device).repeat_interleave(num_beams)
        self.enc = hidden.index_select(0, rows)
        self.mask = mask.to(device).index_select(0, rows)
        self.cache = None
        self.prev_rows: Dict[Tuple[int, Tuple[int, ...]], int] = {}

    @torch.inference_mode()
    def __call__(self, active: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        K = self.K
        inputs = np.repeat(active, K)
        if self.cache is not None:
            idx = [self.prev_rows[(int(a), tuple(p[:-1]))] for a, p in zip(inputs, prefixes)]
            idx_t = torch.tensor(idx, dtype=torch.long, device=self.enc.device)
            self.cache.reorder_cache(idx_t)
            self.enc = self.enc.index_select(0, idx_t)
            self.mask = self.mask.index_select(0, idx_t)
        last = torch.from_numpy(np.ascontiguousarray(prefixes[:, -1:])).to(self.enc.device)
        out = self.model(attention_mask=self.mask, encoder_outputs=(self.enc,), decoder_input_ids=last,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.prev_rows = {(int(a), tuple(p)): r for r, (a, p) in enumerate(zip(inputs, prefixes))}
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu().numpy()


def _tick(timings: Dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] += now - since
    return now


def decode(tok, tokens, eos_id: int) -> str:
    tokens = [int(t) for t in tokens]
    if tokens and tokens[-1] == eos_id:
        tokens = tokens[:-1]
    return tok.decode(tokens, skip_special_tokens=True)


@torch.inference_mode()
def _rescore_one(model, source_ids: List[int], target: List[int], start_id: int) -> np.ndarray:
    device = next(model.parameters()).device
    src = torch.tensor([source_ids], device=device)
    dec_in = torch.tensor([[start_id] + list(target[:-1])], device=device)
    logits = model(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=dec_in).logits[0].float()
    gold = torch.tensor(target, device=device)
    return (logits.gather(-1, gold[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).cpu().numpy()


def quals_reference(model_dir, sources: Sequence[str], summaries: Sequence[str], num_beams=60, num_groups=60,
                    diversity_strength=0.5, min_len=8, max_len=60, len_penalty=1.0, max_pairs=10,
                    max_source_tokens=1024, separator=None, batch_size=8, model=None, tokenizer=None,
                    device="cpu", timings: Optional[Dict[str, float]] = None) -> List[ReferenceResult]:
    """QUALS for each (source, summary), with the original's settings as defaults. A summary
    without any kept pair gets score None (the original writes -1e5). `timings`, if given,
    accumulates seconds per stage (generation, selection, rescoring)."""
    timings = timings if timings is not None else {}
    for stage in ("generation", "selection", "rescoring"):
        timings.setdefault(stage, 0.0)
    if len(sources) != len(summaries):
        raise ValueError("got %d sources but %d summaries" % (len(sources), len(summaries)))
    if model is None:
        model, tokenizer = load_reference_model(model_dir, device)
    cfg = model.config
    sep = separator or getattr(cfg, "qagen_separator", None) or ORIGINAL_SEPARATOR
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else eos
    positions = cfg.max_position_embeddings
    bos = cfg.bos_token_id if getattr(cfg, "qagen_source_bos", False) else None
    results = []
    for b in range(0, len(sources), batch_size):
        srcs, summs = list(sources[b: b + batch_size]), list(summaries[b: b + batch_size])
        t = time.perf_counter()
        summ_ids = [encode_text(tokenizer, s, positions, eos, bos) for s in summs]
        stepper = _HFStepper(model, summ_ids, num_beams, pad)
        hyps = generate_reference(stepper, len(summs), num_beams, num_groups, diversity_strength, min_len,
                                  min(max_len, positions - 1), pad_id=pad, eos_id=eos, decoder_start_id=start,
                                  len_penalty=len_penalty)
        t = _tick(timings, "generation", t)
        for src, summ, hs in zip(srcs, summs, hyps):
            texts = [decode(tokenizer, h.tokens, eos) for h in hs]
            kept = select_pairs([(x, h.unnormalized_score) for x, h in zip(texts, hs)],
                                answer_search_text(tokenizer, summ), sep, max_pairs)
            t = _tick(timings, "selection", t)
            src_ids = encode_text(tokenizer, src, min(max_source_tokens, positions), eos, bos)
            pairs = []
            for i, question, answer in kept:
                tokens = [int(t) for t in hs[i].tokens]
                lp = _rescore_one(model, src_ids, tokens, start)
                pairs.append(ReferencePair(question, answer, tokens, float(hs[i].score),
                                           float(np.mean(lp, dtype=np.float64))))
            t = _tick(timings, "rescoring", t)
            score = float(np.mean([p.source_score - p.summary_score for p in pairs])) if pairs else None
            results.append(ReferenceResult(score, pairs))
    return results
