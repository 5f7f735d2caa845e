"""CONSEQ (Nan et al., ACL 2021): contrastive fine-tuning of a summarizer with QUALS.

QUALS cannot be back-propagated, so CONSEQ turns it into training data:

  1. start from a summarizer fine-tuned by maximum likelihood (a local `transformers` seq2seq folder);
  2. sample summaries of every training document (top-k 50, 6 samples, 10-60 new tokens:
     --sample-min-len/--sample-max-len; --min-len/--max-len are QUALS's own);
  3. score the samples and the ground-truth summary with QUALS;
  4. per document the negative is the sample with the LOWEST score; keep the documents whose
     negative is among the lowest --neg-ratio fraction (0.3) of negatives AND whose ground truth
     is among the highest --pos-ratio fraction (0.3) of ground truths;
  5. fine-tune on (source, positive = ground truth, negative) with label-smoothed NLL on the
     positive plus token-level unlikelihood -log(1 - p) on the negative (eps 0.1, lr 3e-6,
     Adam, clip-norm 0.1, linear decay, 2 epochs: the reference's settings).

`--metric rouge` is the paper's ROUGE baseline: the mean of ROUGE-1/2/L F1 against the reference
replaces QUALS when picking negatives; the ground-truth filter is then off (a reference's ROUGE
against itself is always 1).

Run folder (each stage resumes from what its file already holds; --stages runs a subset):
  samples.jsonl      {doc, id, samples: [text x num_samples]}
  scores.jsonl       {doc, id, metric, reference: score|null, samples: [score|null, ...]}
  contrastive.jsonl  {doc, id, source, positive, negative, negative_score, reference_score}
  checkpoints/step-N resumable fine-tuning state;  model/  the CONSEQ summarizer
  log.jsonl          one line per event

Large runs: `--stages sample,score --shard I/N` in N run folders, then concatenate their
samples.jsonl / scores.jsonl into one folder (lines carry their document index; order is free)
and run `--stages build,train` there."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from quals_fast.aggregation import REFERENCE_NO_PAIR_SCORE

STAGES = ("sample", "score", "build", "train")
METRICS = ("quals", "rouge")
# The reference's selection code marks "no QA pair" with +-1e5; a score file written by it (or by
# `quals-fast score --no-pair-score -1e5`) must not look like a real, extremely low score.
NO_PAIR_SENTINELS = (REFERENCE_NO_PAIR_SCORE, -REFERENCE_NO_PAIR_SCORE)
# Stands for the score of an empty sampled text: never a negative under any no_pair rule, since an
# empty negative leaves nothing to train on.
EMPTY = "empty"


# ============================================================ step 4: the contrastive set
@dataclass(frozen=True)
class ContrastiveExample:
    doc: int
    negative_index: int          # which sample of the document
    negative_score: float
    reference_score: Optional[float]


def _usable(score) -> bool:
    return score is not None and not (isinstance(score, float) and math.isnan(score)) \
        and score not in NO_PAIR_SENTINELS


def _top_count(ratio: float, n: int) -> int:
    # Python's round (half to even) is what the reference used: round(0.3 * 5) == 2, round(0.5 * 5) == 2.
    return n if ratio == 1.0 else round(ratio * n)


def pick_negative(sample_scores: Sequence[Optional[float]], no_pair: str = "skip"):
    """(index, score) of a document's lowest-scored sample, or None when it has no usable one.

    no_pair="skip" (default, the reference's selection code): a sample with no QA pair tells
    nothing about faithfulness and is never the negative. no_pair="lowest": it counts as the
    lowest possible score (the reference's -1e5 sentinel), so degenerate samples become negatives.
    Ties go to the earliest sample (the reference compares with a strict `<`). A score equal to
    EMPTY (an empty sampled text) is never picked."""
    if no_pair not in ("skip", "lowest"):
        raise ValueError("no_pair must be 'skip' or 'lowest', got %r" % (no_pair,))
    best = None
    for i, s in enumerate(sample_scores):
        if s == EMPTY:
            continue
        if not _usable(s):
            if no_pair == "skip":
                continue
            s = REFERENCE_NO_PAIR_SCORE
        if best is None or s < best[1]:
            best = (i, float(s))
    return best


def build_contrastive_set(reference_scores: Sequence[Optional[float]],
                          sample_scores: Sequence[Sequence[Optional[float]]],
                          neg_ratio: float = 0.3, pos_ratio: Optional[float] = 0.3,
                          no_pair: str = "skip") -> List[ContrastiveExample]:
    """Step 4 of the recipe, as the reference's make_unlikelihood_dataset does it.

    Both cut-offs count over ALL N documents: the k = round(ratio * N) lowest negatives and the
    k' = round(pos_ratio * N) highest ground truths; a document is kept when it is in both.
    Ties at a cut-off are broken by document order (a stable sort, as the reference): exactly k
    documents pass each filter, so the set size never depends on how many scores tie.
    A document without a usable negative (see pick_negative) or whose ground truth has no QA
    pair (None or +-1e5) ranks after every scored one: it passes a filter only when the ratio is
    1.0, and a document with no negative is never kept. pos_ratio=None turns the ground-truth
    filter off (the ROUGE baseline). Returns examples in document order."""
    n = len(sample_scores)
    if len(reference_scores) != n:
        raise ValueError("%d reference scores for %d documents" % (len(reference_scores), n))
    for name, r in (("neg_ratio", neg_ratio), ("pos_ratio", pos_ratio)):
        if r is not None and not 0.0 < r <= 1.0:
            raise ValueError("%s must be in (0, 1], got %r" % (name, r))
    negatives = [pick_negative(s, no_pair) for s in sample_scores]
    neg_order = sorted(range(n), key=lambda d: (negatives[d] is None, negatives[d][1] if negatives[d] else 0.0))
    chosen = set(neg_order[:_top_count(neg_ratio, n)])
    if pos_ratio is not None:
        ref_ok = [_usable(s) for s in reference_scores]
        pos_order = sorted(range(n), key=lambda d: (not ref_ok[d], -reference_scores[d] if ref_ok[d] else 0.0))
        chosen &= set(pos_order[:_top_count(pos_ratio, n)])
    return [ContrastiveExample(d, negatives[d][0], negatives[d][1],
                               float(reference_scores[d]) if _usable(reference_scores[d]) else None)
            for d in sorted(chosen) if negatives[d] is not None]


# ============================================================ step 5: the losses
def label_smoothed_nll_loss(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, pad_id: int) -> torch.Tensor:
    """fairseq's label_smoothed_nll_loss, summed over the non-pad positions:
    (1 - eps) * sum -lprobs[y] + (eps / V) * sum_v -lprobs[v]."""
    if lprobs.shape[:-1] != target.shape:
        raise ValueError("lprobs %s and target %s disagree" % (tuple(lprobs.shape), tuple(target.shape)))
    pad = target.eq(pad_id)
    # masked_fill rather than a product: a pad row may hold -inf, and 0 * inf is nan.
    nll = (-lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)).masked_fill(pad, 0.0).sum()
    if not epsilon:
        return nll
    smooth = (-lprobs.sum(-1)).masked_fill(pad, 0.0).sum()
    return (1.0 - epsilon) * nll + (epsilon / lprobs.size(-1)) * smooth


def _log_one_minus_p(logits: torch.Tensor) -> torch.Tensor:
    # The reference's exact form, clamp included: where p rounds to 1 the clamp also stops the gradient.
    return torch.log(torch.clamp(1.0 - torch.softmax(logits.float(), dim=-1), min=1e-20))


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    """sum over non-pad positions of -log(1 - p(label)); logits (B, T, V), labels (B, T)."""
    return label_smoothed_nll_loss(_log_one_minus_p(logits), labels, 0.0, pad_id)


def positive_term(logits, labels, pad_id: int, label_smoothing: float = 0.1) -> torch.Tensor:
    return label_smoothed_nll_loss(torch.log_softmax(logits.float(), dim=-1), labels, label_smoothing, pad_id)


def negative_term(logits, labels, pad_id: int, label_smoothing: float = 0.1) -> torch.Tensor:
    return label_smoothed_nll_loss(_log_one_minus_p(logits), labels, label_smoothing, pad_id)


def conseq_loss(pos_logits, pos_labels, neg_logits, neg_labels, pad_id: int, label_smoothing: float = 0.1):
    """The reference criterion (label_smoothed_cross_entropy_with_unlikelihood): the same
    label-smoothed NLL on log p for the positive and on log(clamp(1 - p, 1e-20)) for the
    negative, both summed over non-pad tokens, added. fairseq then divides the gradient by the
    number of target tokens of both; the trainer here does the same."""
    return (positive_term(pos_logits, pos_labels, pad_id, label_smoothing)
            + negative_term(neg_logits, neg_labels, pad_id, label_smoothing))


# ============================================================ in-loop reward
class QualsReward:
    """QUALS as a reward inside a training step: the QAGen model is loaded once and stays resident.

        reward = QualsReward(device="cuda")            # default QAGen model
        r = reward(sources, generated)                 # float32 tensor (len,) on `device`

    A summary for which no QA pair survives (or an empty one) has no QUALS. no_pair_reward="min" (default) gives
    it the lowest reward of the summaries of the same call that have one, so that emitting
    uncheckable text is never a way to a better reward; when no summary of the call has a pair
    all get 0.0 (every reward equal: no preference). A float gives that fixed value instead.
    After each call `last_has_pairs` (bool tensor), `last_results` (QualsResult list) and
    `last_seconds` say what the rewards are made of and what they cost."""

    def __init__(self, model_dir=None, device="cpu", batch_size: int = 8, qagen_device=None, backend="torch",
                 no_pair_reward="min", **options):
        from quals_fast.scorer import QualsScorer

        if options.get("no_pair_score") is not None:
            raise ValueError("use no_pair_reward, not no_pair_score, to set the reward of a summary with no QA pair")
        if no_pair_reward != "min" and not isinstance(no_pair_reward, (int, float)):
            raise ValueError("no_pair_reward must be 'min' or a number, got %r" % (no_pair_reward,))
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.no_pair_reward = no_pair_reward
        self.scorer = QualsScorer(model_dir, backend=backend, device=qagen_device or device, **options)
        self.last_results, self.last_has_pairs, self.last_seconds = [], None, 0.0

    @torch.no_grad()
    def __call__(self, sources: Sequence[str], summaries: Sequence[str]) -> torch.Tensor:
        t0 = time.perf_counter()
        results = self.scorer.score(sources, summaries, batch_size=self.batch_size, on_error="report")
        has = [r.score is not None for r in results]
        if self.no_pair_reward == "min":
            fill = min((r.score for r in results if r.score is not None), default=0.0)
        else:
            fill = float(self.no_pair_reward)
        values = [r.score if ok else fill for r, ok in zip(results, has)]
        self.last_results, self.last_seconds = results, time.perf_counter() - t0
        self.last_has_pairs = torch.tensor(has, dtype=torch.bool, device=self.device)
        return torch.tensor(values, dtype=torch.float32, device=self.device)


def rouge_ensemble(references: Sequence[str], candidates: Sequence[str]) -> List[float]:
    """Mean of ROUGE-1/2/L F1 (stemmed, as the reference's rouge_scorer path) of each candidate."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the ROUGE metric needs rouge-score: pip install 'quals-fast[conseq]'") from exc
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = []
    for ref, cand in zip(references, candidates):
        s = scorer.score(ref, cand)
        out.append(float(np.mean([s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")])))
    return out


# ============================================================ summarizer I/O
def encode(tokenizer, texts: Sequence[str], eos_id: int, max_len: int) -> List[List[int]]:
    """Text ids + EOS, no BOS: the convention of the QAGen models, kept for summarizers so that
    one warm start serves both; truncation always keeps the EOS."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [x[: max_len - 1] + [eos_id] for x in ids]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def load_summarizer(model_dir, device="cpu"):
    import os

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), local_files_only=True).to(device)
    return model, tok


def _max_source_len(model, requested: int) -> int:
    return min(requested, getattr(model.config, "max_position_embeddings", requested))


@dataclass
class SamplingOptions:
    num_samples: int = 6
    top_k: int = 50
    min_len: int = 10
    max_len: int = 60
    max_source_len: int = 512


@torch.no_grad()
def generate_summaries(model, tokenizer, sources: Sequence[str], max_source_len: int, **generate_kwargs) -> List[str]:
    """transformers `generate` on sources encoded as for training; returns the decoded texts,
    num_return_sequences per source, source by source."""
    cfg = model.config
    ids = encode(tokenizer, sources, cfg.eos_token_id, _max_source_len(model, max_source_len))
    input_ids = pad_batch(ids, cfg.pad_token_id).to(next(model.parameters()).device)
    model.eval()
    out = model.generate(input_ids=input_ids, attention_mask=input_ids.ne(cfg.pad_token_id),
                         pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id, **generate_kwargs)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def sample_summaries(model, tokenizer, sources: Sequence[str], options: SamplingOptions, seed: int) -> List[List[str]]:
    """num_samples top-k samples per source. The seed is set per call: with one source per call a
    resumed or sharded run draws exactly what an uninterrupted one draws (with more, the draws
    also depend on which documents share the batch)."""
    torch.manual_seed(seed)
    k = options.num_samples
    texts = generate_summaries(model, tokenizer, sources, options.max_source_len, do_sample=True,
                               top_k=options.top_k, top_p=1.0, temperature=1.0, num_beams=1, num_return_sequences=k,
                               min_new_tokens=options.min_len, max_new_tokens=options.max_len)
    return [texts[i * k: (i + 1) * k] for i in range(len(sources))]


# ============================================================ step 5: fine-tuning
@dataclass
class FinetuneOptions:
    lr: float = 3e-6
    epochs: float = 2.0
    batch_size: int = 8
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 0.1
    warmup_steps: int = 0
    max_source_len: int = 512
    max_target_len: int = 128
    save_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0


def _batch_logits(model, src_ids, tgt_ids, pad_id, start_id):
    """Teacher-forced logits; labels are the target ids + EOS, the decoder input is them shifted
    right behind the decoder start token."""
    device = next(model.parameters()).device
    src = pad_batch(src_ids, pad_id).to(device)
    labels = pad_batch(tgt_ids, pad_id).to(device)
    dec_in = torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)
    # No decoder mask: targets are right-padded and attention is causal, so pads never reach a
    # position that carries a label.
    logits = model(input_ids=src, attention_mask=src.ne(pad_id), decoder_input_ids=dec_in, use_cache=False).logits
    return logits, labels


def _checkpoints(out: Path):
    d = out / "checkpoints"
    found = [(int(p.name[5:]), p) for p in d.glob("step-*") if (p / "trainer_state.pt").is_file()] if d.is_dir() else []
    return sorted(found)


def finetune(model, tokenizer, examples: Sequence[dict], out_dir, options: FinetuneOptions = FinetuneOptions(),
             resume: bool = False, progress: bool = True, log=None) -> Path:
    """Fine-tune on dicts {source, positive, negative (or None)}; with no negatives this is plain
    label-smoothed maximum likelihood (the demonstration's first stage). Writes resumable
    checkpoints and the final model to out_dir/model; returns that folder."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    final = out / "model"
    if (final / "conseq_done.json").is_file():
        return final
    cfg = model.config
    pad_id, eos_id = cfg.pad_token_id, cfg.eos_token_id
    start_id = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else eos_id
    src_len = _max_source_len(model, options.max_source_len)
    srcs = encode(tokenizer, [e["source"] for e in examples], eos_id, src_len)
    pos = encode(tokenizer, [e["positive"] for e in examples], eos_id, options.max_target_len)
    neg = [None if e.get("negative") is None else ids for e, ids in
           zip(examples, encode(tokenizer, [e.get("negative") or "" for e in examples], eos_id, options.max_target_len))]
    per_epoch = math.ceil(len(examples) / options.batch_size)
    total = max(1, int(round(options.epochs * per_epoch)))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=options.lr, betas=(0.9, 0.999), eps=1e-8)
    # fairseq's polynomial_decay with power 1: linear to 0 (CONSEQ uses no warm-up; a fresh
    # summarizer's MLE stage needs one).
    warm = options.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    step = 0
    digest = hashlib.sha1(json.dumps([[e["source"], e["positive"], e.get("negative")] for e in examples]).encode())
    digest = digest.hexdigest()
    ckpts = _checkpoints(out)
    if ckpts and not resume:
        raise ValueError("%s already has checkpoints; resume or use a new folder" % out)
    if ckpts:
        from safetensors.torch import load_model

        step, path = ckpts[-1]
        state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
        if state.get("examples_sha1") != digest:
            raise ValueError("%s was trained on other examples than these; use a new folder" % out)
        load_model(model, str(path / "model.safetensors"), strict=True)
        model.tie_weights()
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    model.train()
    bar = tqdm(total=total, initial=step, desc="fine-tune", unit="step", disable=not progress, dynamic_ncols=True)
    while step < total:
        epoch, k = divmod(step, per_epoch)
        order = np.random.RandomState(options.seed + epoch).permutation(len(examples))
        idx = order[k * options.batch_size: (k + 1) * options.batch_size]
        logits, labels = _batch_logits(model, [srcs[i] for i in idx], [pos[i] for i in idx], pad_id, start_id)
        pos_loss = positive_term(logits, labels, pad_id, options.label_smoothing)
        ntok = int(labels.ne(pad_id).sum())
        neg_idx = [i for i in idx if neg[i] is not None]
        neg_loss = torch.zeros((), device=pos_loss.device)
        if neg_idx:
            n_logits, n_labels = _batch_logits(model, [srcs[i] for i in neg_idx], [neg[i] for i in neg_idx],
                                               pad_id, start_id)
            neg_loss = negative_term(n_logits, n_labels, pad_id, options.label_smoothing)
            ntok += int(n_labels.ne(pad_id).sum())
        optim.zero_grad(set_to_none=True)
        ((pos_loss + neg_loss) / ntok).backward()
        if options.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_norm)
        optim.step()
        sched.step()
        step += 1
        bar.update(1)
        pos_sum, neg_sum = float(pos_loss.detach()), float(neg_loss.detach())
        bar.set_postfix(pos=f"{pos_sum / ntok:.3f}", neg=f"{neg_sum / ntok:.3f}")
        if log is not None:
            log({"event": "train", "step": step, "pos_loss_sum": pos_sum, "neg_loss_sum": neg_sum, "tokens": ntok,
                 "lr": sched.get_last_lr()[0]})
        if step == total or (options.save_every and step % options.save_every == 0):
            _save_checkpoint(out, step, model, optim, sched, options.keep_checkpoints, digest)
    bar.close()
    model.eval()
    tmp = out / ".model-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "conseq_done.json").write_text(json.dumps({"steps": total, "examples": len(examples),
                                                      "options": asdict(options)}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _save_checkpoint(out: Path, step: int, model, optim, sched, keep: int, examples_sha1: str) -> None:
    from safetensors.torch import save_model

    tmp, final = out / "checkpoints" / (".tmp-step-%d" % step), out / "checkpoints" / ("step-%d" % step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"step": step, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "examples_sha1": examples_sha1,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a crash mid-write never leaves a half checkpoint under the real name
    for _, old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ============================================================ the pipeline
def read_jsonl(path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_documents(path, limit: int = 0) -> List[dict]:
    docs = read_jsonl(path)
    for n, d in enumerate(docs, 1):
        for k in ("source", "summary"):
            if not isinstance(d.get(k), str) or not d[k].strip():
                raise ValueError("%s line %d: field %r must be a non-empty string" % (path, n, k))
    return docs[:limit] if limit else docs


def _done_docs(path: Path) -> set:
    """Document indices already in a stage file; a torn last line (an interrupted write) is cut off."""
    from quals_fast.score_cli import completed_lines

    if not path.exists():
        return set()
    completed_lines(str(path))
    return {rec["doc"] for rec in read_jsonl(path)}


def _by_doc(path: Path, n: int, what: str) -> List[dict]:
    recs = {}
    for rec in read_jsonl(path):
        if rec["doc"] in recs:
            raise ValueError("%s holds document %d twice" % (path, rec["doc"]))
        recs[rec["doc"]] = rec
    missing = [d for d in range(n) if d not in recs]
    if missing:
        raise ValueError("%s lacks %d of %d documents (first: %d); finish the %s stage (with --resume), or "
                         "concatenate the shards' files" % (path, len(missing), n, missing[0], what))
    return [recs[d] for d in range(n)]


def _parse_shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError("--shard I/N needs 0 <= I < N")
    return i, n


class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.docs = read_documents(args.data, args.limit)
        i, n = args.shard
        self.todo_docs = [d for d in range(len(self.docs)) if d % n == i]
        self._log = open(self.out / "log.jsonl", "a", encoding="utf-8")

    def log(self, rec: dict) -> None:
        self._log.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}) + "\n")
        self._log.flush()

    def _record(self, doc: int, **fields) -> dict:
        rec = {"doc": doc}
        if "id" in self.docs[doc]:
            rec["id"] = self.docs[doc]["id"]
        rec.update(fields)
        return rec

    def _pending(self, path: Path, stage: str):
        done = _done_docs(path)
        todo = [d for d in self.todo_docs if d not in done]
        self.log({"event": "stage", "stage": stage, "done": len(done), "todo": len(todo)})
        return todo

    def sample(self) -> None:
        from tqdm.auto import tqdm

        a = self.args
        path = self.out / "samples.jsonl"
        todo = self._pending(path, "sample")
        if not todo:
            return
        model, tok = load_summarizer(a.summarizer, a.device)
        opts = SamplingOptions(a.num_samples, a.top_k, a.sample_min_len, a.sample_max_len, a.max_source_len)
        with open(path, "a", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="sample", unit="doc", disable=a.no_progress) as bar:
            for start in range(0, len(todo), a.sample_batch_size):
                chunk = todo[start: start + a.sample_batch_size]
                texts = sample_summaries(model, tok, [self.docs[d]["source"] for d in chunk], opts,
                                         seed=a.seed * 1_000_003 + chunk[0])
                for d, samples in zip(chunk, texts):
                    f.write(json.dumps(self._record(d, samples=samples), ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(chunk))

    def score(self) -> None:
        from tqdm.auto import tqdm

        a = self.args
        path = self.out / "scores.jsonl"
        todo = self._pending(path, "score")
        if not todo:
            return
        samples = {r["doc"]: r["samples"] for r in read_jsonl(self.out / "samples.jsonl")}
        missing = [d for d in todo if d not in samples]
        if missing:
            raise SystemExit("conseq: samples.jsonl lacks %d documents of this run; run the sample stage first"
                             % len(missing))
        per_doc = 1 + a.num_samples
        sources, summaries = [], []
        for d in todo:
            doc = self.docs[d]
            if len(samples[d]) != a.num_samples:
                raise SystemExit("conseq: document %d has %d samples, --num-samples is %d"
                                 % (d, len(samples[d]), a.num_samples))
            sources += [doc["source"]] * per_doc
            summaries += [doc["summary"]] + samples[d]
        with open(path, "a", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="score (%s)" % a.metric, unit="doc", disable=a.no_progress) as bar:
            buf, docs = [], iter(todo)
            for value in self._scores(sources, summaries):
                buf.append(value)
                if len(buf) == per_doc:
                    rec = self._record(next(docs), metric=a.metric, reference=buf[0], samples=buf[1:])
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    bar.update(1)
                    buf = []

    def _scores(self, sources, summaries):
        """One score (or None) per summary, in order, as they are computed. An empty sampled text
        gets None under both metrics: there is nothing to train on."""
        a = self.args
        if a.metric == "rouge":
            per_doc = 1 + a.num_samples
            for start in range(0, len(summaries), per_doc):
                reference, samples = summaries[start], summaries[start + 1: start + per_doc]
                yield None  # a reference against itself carries no information (see build)
                for text, value in zip(samples, rouge_ensemble([reference] * len(samples), samples)):
                    yield value if text.strip() else None
            return
        from quals_fast.score_cli import stage_options_from_args
        from quals_fast.scorer import QualsScorer

        scorer = QualsScorer(a.qagen, backend=a.backend, device=a.device, **stage_options_from_args(a))
        for res in scorer.iter_scores(sources, summaries, batch_size=a.score_batch_size, on_error="report"):
            yield res.score

    def build(self) -> None:
        a = self.args
        n = len(self.docs)
        samples = _by_doc(self.out / "samples.jsonl", n, "sample")
        scores = _by_doc(self.out / "scores.jsonl", n, "score")
        metrics = {r.get("metric") for r in scores}
        if metrics != {a.metric}:
            raise SystemExit("conseq: scores.jsonl holds metric(s) %s, the run asks for %s" % (sorted(metrics), a.metric))
        sample_scores = [[s if t.strip() else EMPTY for s, t in zip(r["samples"], sm["samples"])]
                         for r, sm in zip(scores, samples)]
        pos_ratio = None if a.metric == "rouge" else a.pos_ratio
        kept = build_contrastive_set([r["reference"] for r in scores], sample_scores, a.neg_ratio, pos_ratio, a.no_pair)
        tmp = self.out / "contrastive.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for ex in kept:
                doc = self.docs[ex.doc]
                f.write(json.dumps(self._record(ex.doc, source=doc["source"], positive=doc["summary"],
                                                negative=samples[ex.doc]["samples"][ex.negative_index],
                                                negative_index=ex.negative_index, negative_score=ex.negative_score,
                                                reference_score=ex.reference_score), ensure_ascii=False) + "\n")
        tmp.replace(self.out / "contrastive.jsonl")
        self.log({"event": "built", "documents": n, "examples": len(kept), "metric": a.metric,
                  "neg_ratio": a.neg_ratio, "pos_ratio": pos_ratio, "no_pair": a.no_pair})
        print("conseq: %d contrastive examples from %d documents" % (len(kept), n))

    def train(self) -> Path:
        a = self.args
        examples = read_jsonl(self.out / "contrastive.jsonl")
        if not examples:
            raise SystemExit("conseq: contrastive.jsonl is empty; raise --neg-ratio/--pos-ratio or add documents")
        model, tok = load_summarizer(a.summarizer, a.device)
        opts = FinetuneOptions(lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, label_smoothing=a.label_smoothing,
                               weight_decay=a.weight_decay, clip_norm=a.clip_norm, max_source_len=a.max_source_len,
                               max_target_len=a.max_target_len, save_every=a.save_every, seed=a.seed)
        final = finetune(model, tok, examples, self.out, opts, resume=a.resume, progress=not a.no_progress, log=self.log)
        self.log({"event": "trained", "model": str(final)})
        print("conseq: model written to %s" % final)
        return final


def register_cli(subparsers):
    from quals_fast.backends import BACKENDS
    from quals_fast.score_cli import add_stage_flags

    p = subparsers.add_parser("conseq", help="CONSEQ: contrastive fine-tuning of a summarizer with QUALS",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="JSONL training documents: 'source', 'summary' (the reference), optional 'id'")
    p.add_argument("--summarizer", required=True, help="local transformers seq2seq folder, fine-tuned by MLE")
    p.add_argument("--output", required=True, help="run folder (stage files, checkpoints, model/)")
    p.add_argument("--qagen", default=None, help="QAGen model folder for QUALS (default: the embedded model)")
    p.add_argument("--metric", choices=METRICS, default="quals", help="what ranks the samples (default: quals)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of %s (default: all)" % ",".join(STAGES))
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="I/N",
                   help="sample/score only documents with index %% N == I (default 0/1)")
    p.add_argument("--resume", action="store_true", help="continue a run folder that already has stage files")
    p.add_argument("--limit", type=int, default=0, help="use only the first N documents (0 = all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("step 2: sampling")
    g.add_argument("--num-samples", type=int, default=6)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--sample-min-len", type=int, default=10, help="min new tokens of a sample (default 10)")
    g.add_argument("--sample-max-len", type=int, default=60, help="max new tokens of a sample (default 60)")
    g.add_argument("--sample-batch-size", type=int, default=4, help="documents sampled together (default 4)")
    g.add_argument("--max-source-len", type=int, default=512, help="summarizer source tokens incl. EOS (default 512)")
    g = p.add_argument_group("step 3: scoring (QUALS flags below are those of `quals-fast score`)")
    g.add_argument("--score-batch-size", type=int, default=8, help="summaries decoded together (default 8)")
    g.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="QUALS backend (default torch; onnx is exact and faster on CPU, see docs/BACKENDS.md)")
    g = p.add_argument_group("step 4: contrastive set")
    g.add_argument("--neg-ratio", type=float, default=0.3, help="keep negatives among the lowest fraction (default 0.3)")
    g.add_argument("--pos-ratio", type=float, default=0.3,
                   help="keep ground truths among the highest fraction (default 0.3; off with --metric rouge)")
    g.add_argument("--no-pair", choices=("skip", "lowest"), default="skip",
                   help="a sample with no QA pair: never the negative (skip, the reference's selection) or the "
                        "lowest score (lowest)")
    g = p.add_argument_group("step 5: fine-tuning")
    g.add_argument("--lr", type=float, default=3e-6)
    g.add_argument("--epochs", type=float, default=2.0)
    g.add_argument("--batch-size", type=int, default=8, help="contrastive examples per step (default 8)")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip-norm", type=float, default=0.1)
    g.add_argument("--max-target-len", type=int, default=128, help="target tokens incl. EOS (default 128)")
    g.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (default 200)")
    add_stage_flags(p)
    p.set_defaults(func=run_cli)
    return p


def run_cli(args) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit("conseq: unknown stage(s) %s; choose from %s" % (bad, ",".join(STAGES)))
    if args.shard != (0, 1) and set(stages) - {"sample", "score"}:
        raise SystemExit("conseq: --shard applies to the sample and score stages only (use --stages sample,score)")
    out = Path(args.output)
    appended = [f for f in ("sample", "score") if f in stages and (out / (f + "s.jsonl")).exists()]
    if appended and not args.resume:
        raise SystemExit("conseq: %s already holds %s; pass --resume to continue it"
                         % (out, ", ".join(f + "s.jsonl" for f in appended)))
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args)
    run.log({"event": "start", "stages": stages, "options": {k: v for k, v in vars(args).items() if k != "func"}})
    for stage in STAGES:
        if stage in stages:
            try:
                getattr(run, stage)()
            except (ValueError, FileNotFoundError) as exc:  # a run folder or input the stage cannot use
                raise SystemExit("conseq: %s stage: %s" % (stage, exc)) from None
    return 0
