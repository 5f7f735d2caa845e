"""SQuAD v1.1 -> QAGen examples (context -> `question [qsep] answer`), batching and collation.

Questions are kept grouped with their paragraph: SQuAD has ~5 questions per paragraph and the
encoder (the expensive part on CPU) then runs once per paragraph in a batch, not once per question.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .warmstart import EOS_ID, PAD_ID

TRAIN_FILES = ("squad-v1.1-train-subset.json", "squad-v1.1-dev-a.json")
VALID_FILE = "squad-v1.1-dev-b.json"  # validation only: never trained on


@dataclass
class Paragraph:
    source: list[int]  # text ids + eos
    targets: list[list[int]]  # question [sep] answer, without the final eos


def _squad_items(path: Path | str) -> list[tuple[str, list[tuple[str, str, int]]]]:
    """[(context, [(question, answer, answer_start), ...]), ...] in file order; the first gold
    answer is used (v1.1 dev lists several, usually the same span)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            qas = [
                (qa["question"], qa["answers"][0]["text"], int(qa["answers"][0].get("answer_start", -1)))
                for qa in para["qas"]
                if qa.get("answers") and qa["question"].strip() and qa["answers"][0]["text"].strip()
            ]
            if qas:
                out.append((para["context"], qas))
    return out


def read_squad(path: Path | str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(context, [(question, answer), ...]), ...] in file order (the first gold answer)."""
    return [(c, [(q, a) for q, a, _ in qas]) for c, qas in _squad_items(path)]


def first_paragraphs(files: Iterable[Path | str], max_paragraphs: int, reader) -> list:
    """`reader`'s paragraphs of `files` in order, the first `max_paragraphs` if > 0."""
    raw = [pq for path in files for pq in reader(path)]
    return raw[:max_paragraphs] if max_paragraphs else raw


def build_paragraphs(
    files: Iterable[Path | str],
    tokenizer,
    sep_id: int,
    max_source_len: int,
    max_target_len: int,
    max_paragraphs: int = 0,
) -> list[Paragraph]:
    """Tokenised paragraphs of `files` in order (the first `max_paragraphs` if > 0)."""
    return tokenise_paragraphs(first_paragraphs(files, max_paragraphs, read_squad), tokenizer, sep_id,
                               max_source_len, max_target_len)


def tokenise_paragraphs(raw, tokenizer, sep_id: int, max_source_len: int, max_target_len: int) -> list[Paragraph]:
    """[(text, [(question, answer), ...]), ...] -> `Paragraph`s, truncated to the length limits."""
    # One batched tokenizer call per field: ~10x faster than per-example calls.
    ctx = _ids(tokenizer, [c for c, _ in raw])
    qs = _ids(tokenizer, [q.strip() for _, qas in raw for q, _ in qas])
    ans = _ids(tokenizer, [a.strip() for _, qas in raw for _, a in qas])
    paras, k = [], 0
    for (_, qas), c in zip(raw, ctx):
        tgts = []
        for _ in qas:
            tgts.append((qs[k] + [sep_id] + ans[k])[: max_target_len - 1])
            k += 1
        paras.append(Paragraph(c[: max_source_len - 1] + [EOS_ID], tgts))
    return paras


def with_source_bos(paragraphs: Sequence[Paragraph], bos_id: int, max_source_len: int) -> list[Paragraph]:
    """`paragraphs` with `bos_id` before each source, still at most `max_source_len` ids ending in
    eos (truncated as `QAGen.encode_text` truncates), for models with `qagen_source_bos`."""
    out = []
    for p in paragraphs:
        src = [bos_id] + p.source
        if len(src) > max_source_len:
            src = src[: max_source_len - 1] + [EOS_ID]
        out.append(Paragraph(src, p.targets))
    return out


def as_model_reads(paragraphs: Sequence[Paragraph], config, max_source_len: int) -> list[Paragraph]:
    """`paragraphs` as the model of `config` reads them: with its bos first if it has
    `qagen_source_bos`, else unchanged."""
    if getattr(config, "qagen_source_bos", False):
        return with_source_bos(paragraphs, config.bos_token_id, max_source_len)
    return list(paragraphs)


# A sentence ends at . ! or ? (and any closing quote/bracket) before whitespace and an upper-case
# letter, digit or opening quote. Crude: an abbreviation before a capital ("the U.S. Army") splits
# wrongly, which only shortens one training input.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (together they cover it, whitespace aside)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group().rstrip())
        spans.append((start, end))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def locate_answer(context: str, answer: str, start: int) -> tuple[str, int, int] | None:
    """(stripped answer, start, end) of a SQuAD answer in its paragraph: at the recorded start when
    the stripped text is there (stripping can shift it), else at its first occurrence; None when
    the paragraph does not hold it."""
    answer = answer.strip()
    if not (0 <= start and context[start : start + len(answer)] == answer):
        start = context.find(answer)
    if start < 0:
        return None
    return answer, start, start + len(answer)


def build_short_paragraphs(
    files: Iterable[Path | str],
    tokenizer,
    sep_id: int,
    max_source_len: int,
    max_target_len: int,
    max_paragraphs: int = 0,
    max_sentences: int = 1,
    seed: int = 0,
) -> list[Paragraph]:
    """Every question once more, with a short input: the sentence(s) holding its answer plus up to
    `max_sentences` - 1 neighbours (alternately after and before; the count is drawn per question
    from a seeded generator). QAGen reads summaries of one to a few sentences when it generates,
    and paragraphs (~150 tokens) are all SQuAD gives it otherwise. Questions whose inputs coincide
    share one `Paragraph`; questions whose answer cannot be located are left out."""
    rng = np.random.default_rng([seed, 1])
    raw = first_paragraphs(files, max_paragraphs, _squad_items)
    groups: dict[tuple[int, int, int], list[int]] = {}
    texts, questions, answers = [], [], []
    for p, (context, qas) in enumerate(raw):
        spans = sentence_spans(context)
        for question, answer, start in qas:
            located = locate_answer(context, answer, start)
            if located is None:
                continue
            answer, start, end = located
            hit = [i for i, (a, b) in enumerate(spans) if a < end and b > start]
            lo, hi = hit[0], hit[-1]
            extra = int(rng.integers(0, max_sentences))
            for k in range(extra):
                if k % 2 == 0 and hi + 1 < len(spans):
                    hi += 1
                elif lo > 0:
                    lo -= 1
                elif hi + 1 < len(spans):
                    hi += 1
            key = (p, lo, hi)
            if key not in groups:
                groups[key] = []
                texts.append(context[spans[lo][0] : spans[hi][1]])
            groups[key].append(len(questions))
            questions.append(question.strip())
            answers.append(answer)
    src = _ids(tokenizer, texts)
    qs, ans = _ids(tokenizer, questions), _ids(tokenizer, answers)
    return [
        Paragraph(s[: max_source_len - 1] + [EOS_ID], [(qs[k] + [sep_id] + ans[k])[: max_target_len - 1] for k in ks])
        for s, ks in zip(src, groups.values())
    ]


# The wh-word a named-entity subject is asked with; other entity kinds (dates, numbers) rarely
# act, and who-did-what is the failure QUALS exists to catch.
SUBJECT_WH = {"PERSON": "who", "NORP": "who", "ORG": "what", "GPE": "what", "LOC": "what"}


def subject_question(doc) -> tuple[str, str] | None:
    """(question, answer) for a parsed sentence that opens with its main verb's subject and that
    subject is exactly one named entity: "Rockne became head coach in 1918." -> ("who became head
    coach in 1918?", "Rockne"). Else None: anything else needs more than dropping the subject."""
    root = next((t for t in doc if t.dep_ == "ROOT"), None)
    if root is None or root.pos_ not in ("VERB", "AUX"):
        return None
    subjects = [c for c in root.children if c.dep_ in ("nsubj", "nsubjpass")]
    if len(subjects) != 1:
        return None
    lo, hi = subjects[0].left_edge.i, subjects[0].right_edge.i + 1
    ent = next((e for e in doc.ents if e.start == lo and e.end == hi and e.label_ in SUBJECT_WH), None)
    if lo != 0 or ent is None:
        return None
    rest = doc[hi:].text.strip().rstrip(".!;:").strip()
    if not 3 <= len(rest.split()) <= 30 or "?" in rest:
        return None
    return f"{SUBJECT_WH[ent.label_]} {rest}?", ent.text


def build_subject_paragraphs(
    files: Iterable[Path | str],
    tokenizer,
    sep_id: int,
    max_source_len: int,
    max_target_len: int,
    max_paragraphs: int = 0,
    nlp=None,
) -> list[Paragraph]:
    """Rule-made questions (`subject_question`) about the sentences of the training paragraphs,
    with the whole paragraph as input, one `Paragraph` per paragraph that yields any. SQuAD's
    questions are mostly about dates, numbers and descriptions; these add who/what-did-it ones."""
    nlp = _spacy(nlp)
    raw = first_paragraphs(files, max_paragraphs, read_squad)
    owner, sentences = [], []
    for p, (context, _) in enumerate(raw):
        for a, b in sentence_spans(context):
            owner.append(p)
            sentences.append(context[a:b])
    found: dict[int, list[tuple[str, str]]] = {}
    for p, doc in zip(owner, nlp.pipe(sentences, batch_size=256, disable=["lemmatizer"])):
        qa = subject_question(doc)
        if qa:
            found.setdefault(p, []).append(qa)
    ctx = _ids(tokenizer, [raw[p][0] for p in found])
    qs = _ids(tokenizer, [q for qas in found.values() for q, _ in qas])
    ans = _ids(tokenizer, [a for qas in found.values() for _, a in qas])
    out, k = [], 0
    for c, qas in zip(ctx, found.values()):
        targets = [qs[k + i] + [sep_id] + ans[k + i] for i in range(len(qas))]
        k += len(qas)
        # Truncating one would cut its answer off: leave it out instead.
        targets = [t for t in targets if len(t) <= max_target_len - 1]
        if targets:
            out.append(Paragraph(c[: max_source_len - 1] + [EOS_ID], targets))
    return out


# News names teams, companies and countries as actors ("Arsenal beat Chelsea"), so those are asked
# with "who" here, unlike SUBJECT_WH's encyclopedic "what".
ROLE_WH = {"PERSON": "who", "NORP": "who", "ORG": "who", "GPE": "who", "LOC": "what"}
# Finite verbs and the auxiliary that turns them into an object question.
_DO_SUPPORT = {"VBD": "did", "VBZ": "does", "VBP": "do"}
# What may stand between a subject and its verb without the question losing its sense.
_BETWEEN_SUBJECT_AND_VERB = ("advmod", "aux", "auxpass", "neg")
# A clause cut out of a quotation or a question reads as neither.
_QUOTED = re.compile(r"[\"?\u201c\u201d]")


def _actor(doc, token) -> tuple[str, str] | None:
    """(wh-word, text) when `token`'s subtree is one name: a named entity of ROLE_WH's kinds, or
    proper nouns alone (after at most a determiner), which the small spaCy model often leaves
    untagged ("Saka scored"). Else None."""
    lo, hi = token.left_edge.i, token.right_edge.i + 1
    ent = next((e for e in doc.ents if e.start == lo and e.end == hi), None)
    if ent is not None:
        return (ROLE_WH[ent.label_], ent.text) if ent.label_ in ROLE_WH else None
    words = doc[lo + 1 : hi] if doc[lo].pos_ == "DET" else doc[lo:hi]
    if len(words) and all(t.pos_ == "PROPN" for t in words):
        return "who", doc[lo:hi].text
    return None


def _clause_end(verb) -> int:
    """One past the last token of `verb`'s own clause: its subtree without coordinated clauses
    ("... and Merkel said ...") and final punctuation."""
    end = verb.i + 1
    for child in verb.rights:
        if child.dep_ in ("conj", "cc", "punct"):
            break
        end = child.right_edge.i + 1
    return end


def role_questions(doc) -> list[tuple[str, str]]:
    """Rule-made questions about who did what in a parsed text, one per finite verb and role
    (subject, direct object) that is exactly one name (`_actor`): "Saka scored the winner as Arsenal beat Chelsea"
    -> ("who scored the winner as Arsenal beat Chelsea?", "Saka"), ("who beat Chelsea?",
    "Arsenal"), ("who did Arsenal beat?", "Chelsea"). Unlike `subject_question` the verb may stand
    anywhere in a sentence, and objects are asked too: a swapped summary exchanges both."""
    out = []
    for verb in doc:
        if verb.tag_ not in _DO_SUPPORT or verb.pos_ != "VERB":
            continue
        end = _clause_end(verb)
        subjects = [c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass")]
        if len(subjects) != 1 or subjects[0].i > verb.i:
            continue
        subject = subjects[0]
        if subject.pos_ not in ("PROPN", "NOUN"):
            continue  # "who did they kill?" names no one: the question needs the sentence around it
        between = doc[subject.right_edge.i + 1 : verb.i]
        if any(t.dep_ not in _BETWEEN_SUBJECT_AND_VERB for t in between):
            continue
        actor = _actor(doc, subject)
        rest = doc[subject.right_edge.i + 1 : end].text.strip()
        if actor is not None and 2 <= len(rest.split()) <= 30 and not _QUOTED.search(rest):
            out.append((f"{actor[0]} {rest}?", actor[1]))
        objects = [c for c in verb.children if c.dep_ == "dobj"]
        if (len(objects) != 1 or subject.dep_ != "nsubj" or any(c.dep_ in ("aux", "auxpass", "neg") for c in verb.children)
                or objects[0].left_edge.i != verb.i + 1):
            continue
        obj = _actor(doc, objects[0])
        if obj is None:
            continue
        tail = doc[objects[0].right_edge.i + 1 : end].text.strip()
        question = " ".join(w for w in (obj[0], _DO_SUPPORT[verb.tag_], doc[subject.left_edge.i : subject.right_edge.i + 1].text,
                                        verb.lemma_, tail) if w)
        if len(question.split()) <= 32 and not _QUOTED.search(question):
            out.append((question + "?", obj[1]))
    return out


def read_news(path: Path | str, max_items: int = 0) -> list[tuple[str, str]]:
    """[(source, summary), ...] of a news JSONL file of {id, source, summary} lines, the first
    `max_items` if > 0."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((str(row["source"]), str(row["summary"])))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a {{source, summary}} JSON line ({e})") from None
    return rows[:max_items] if max_items else rows


def build_news_role_paragraphs(path: Path | str, tokenizer, sep_id: int, max_source_len: int, max_target_len: int,
                               max_items: int = 0, nlp=None) -> list[Paragraph]:
    """`role_questions` about news, in three kinds of input: each article with the questions of
    all its sentences (the source side of QUALS), each of those sentences alone with its own (a
    summary-length input), and each system summary with its own (what QAGen reads when it
    generates). A summary may say what its article does not, so its questions are only ever asked
    of the summary itself. SQuAD's questions are mostly about dates, numbers and descriptions;
    summaries that swap who did what need questions about the actors."""
    nlp = _spacy(nlp)
    texts, questions = [], []
    for source, summary in read_news(path, max_items):
        per_sentence = []
        for a, b in sentence_spans(source):
            qas = role_questions(nlp(source[a:b]))
            if qas:
                per_sentence.append((source[a:b], qas))
        if per_sentence:
            texts.append(source)
            questions.append([qa for _, qas in per_sentence for qa in qas])
            for sentence, qas in per_sentence:
                texts.append(sentence)
                questions.append(qas)
        qas = role_questions(nlp(summary))
        if qas:
            texts.append(summary)
            questions.append(qas)
    return tokenise_paragraphs(list(zip(texts, questions)), tokenizer, sep_id, max_source_len, max_target_len)


# Named-entity kinds whose exchange changes who did what (people, organisations, places, nationalities).
SWAP_LABELS = ("PERSON", "ORG", "GPE", "NORP", "LOC")
# What a role-swap contrast pair varies: the paragraph (source), or the answer (target) for another
# entity of its sentence ("answer") or of its whole paragraph ("distractor").
CONTRAST_KINDS = ("paragraph", "answer", "distractor")
# Nearest first: a distractor close to the answer is the hard case, and more than two per question
# would let a few long paragraphs dominate the pairs.
DISTRACTORS_PER_QUESTION = 2


def swappable(text: str, a, b) -> bool:
    """Whether exchanging spaCy entities `a` before `b` (char offsets into `text`) changes who did
    what: same kind, distinct names neither inside the other, each once in `text` (else the swap is
    ambiguous), and not one list ("Sicily and Malta": a lower-case word other than and/or/the must
    stand between them, since exchanging list members keeps the meaning)."""
    ka, kb = a.text.lower(), b.text.lower()
    between = [w for w in re.findall(r"\b[a-z]+\b", text[a.end_char : b.start_char]) if w not in ("and", "or", "the")]
    return (a.label_ == b.label_ and a.label_ in SWAP_LABELS and a.end_char <= b.start_char and ka not in kb
            and kb not in ka and text.count(a.text) == 1 and text.count(b.text) == 1 and bool(between))


def exchange(text: str, a, b) -> str:
    """`text` with entities `a` (first) and `b` exchanged."""
    return text[: a.start_char] + b.text + text[a.end_char : b.start_char] + a.text + text[b.end_char :]


def build_swap_contrast(
    files: Iterable[Path | str],
    tokenizer,
    sep_id: int,
    max_source_len: int,
    max_target_len: int,
    max_paragraphs: int = 0,
    nlp=None,
    kind: str = "paragraph",
) -> list[Paragraph]:
    """Contrast pairs for `--swap-contrast-weight`, flat as [faithful, swapped, faithful, ...], each
    a `Paragraph` with one target, built from questions whose answer is a named entity with another
    of its kind in the same sentence ("Arsenal beat Chelsea"). The first row of a pair is the
    question and answer with the paragraph as is. The second, for `kind="paragraph"`, keeps that
    target with the two entities exchanged in the paragraph ("Chelsea beat Arsenal"); for
    `kind="answer"`, keeps the paragraph with the other entity as the answer. Either way the first
    is true and the second false: QUALS's source-vs-summary difference on a role swap (the summary
    side, or the source side's likelihood of a swapped summary's answer), turned into a training
    signal. Questions that give no such swap are left out.

    `kind="distractor"` is "answer" without the sentence: any entity of the answer's kind (every
    spaCy kind: dates and numbers too) anywhere in the paragraph, not named in the question, up to
    DISTRACTORS_PER_QUESTION of them, nearest first. It asks the model to find the answer among all
    the paragraph's candidates, and gives several times the pairs of "answer"."""
    if kind not in CONTRAST_KINDS:
        raise ValueError(f"kind must be one of {CONTRAST_KINDS}, got {kind!r}")
    nlp = _spacy(nlp)
    raw = first_paragraphs(files, max_paragraphs, _squad_items)
    sources, targets = [], []
    docs = nlp.pipe([c for c, _ in raw], batch_size=64, disable=["lemmatizer", "parser", "tagger"])
    for (context, qas), doc in zip(raw, docs):
        spans = sentence_spans(context)
        ents = list(doc.ents) if kind == "distractor" else [e for e in doc.ents if e.label_ in SWAP_LABELS]
        for question, answer, start in qas:
            located = locate_answer(context, answer, start)
            if located is None:
                continue
            answer, start, end = located
            inside = [e for e in ents if start <= e.start_char and e.end_char <= end]
            if len(inside) != 1:
                continue
            a = inside[0]
            if kind == "distractor":
                for b in _distractors(a, ents, question, start, end):
                    sources += [context, context]
                    targets += [(question.strip(), answer), (question.strip(), _replace_in_answer(answer, start, a, b))]
                continue
            sent = next((s for s in spans if s[0] <= a.start_char < s[1]), None)
            partners = [b for b in ents if sent[0] <= b.start_char < sent[1] and not (start < b.end_char and b.start_char < end)]
            for b in partners:
                if kind == "answer" and b.text.lower() in question.lower():
                    continue  # "who beat Pacquiao? Pacquiao" is wrong on its face, teaches nothing
                first, second = (a, b) if a.start_char < b.start_char else (b, a)
                if swappable(context, first, second):
                    if kind == "paragraph":
                        sources += [context, exchange(context, first, second)]
                        targets += [(question.strip(), answer)] * 2
                    else:
                        sources += [context, context]
                        targets += [(question.strip(), answer), (question.strip(), _replace_in_answer(answer, start, a, b))]
                    break
    src = _ids(tokenizer, sources)
    qs, ans = _ids(tokenizer, [q for q, _ in targets]), _ids(tokenizer, [a for _, a in targets])
    out = []
    for k in range(0, len(targets), 2):
        pos, neg = (s[: max_source_len - 1] + [EOS_ID] for s in src[k : k + 2])
        t_pos, t_neg = ((qs[j] + [sep_id] + ans[j])[: max_target_len - 1] for j in (k, k + 1))
        # A swap past the truncation point changes nothing the model sees.
        if (pos, t_pos) != (neg, t_neg):
            out += [Paragraph(pos, [t_pos]), Paragraph(neg, [t_neg])]
    return out


def _replace_in_answer(answer: str, start: int, a, b) -> str:
    # The wrong answer keeps the gold answer's wording around the entity ("the Arsenal side" ->
    # "the Chelsea side"), so only who (or when, how many) differs.
    return answer[: a.start_char - start] + b.text + answer[a.end_char - start :]


def _distractors(a, ents, question: str, start: int, end: int) -> list:
    """Entities of `a`'s kind elsewhere in the paragraph that could stand in for it as the answer:
    another name (case aside), outside the answer, not named in the question; one per name,
    nearest to `a` first."""
    seen, out = {a.text.lower()}, []
    for b in sorted(ents, key=lambda e: abs(e.start_char - a.start_char)):
        name = b.text.lower()
        if (b.label_ == a.label_ and name not in seen and name not in question.lower()
                and not (start < b.end_char and b.start_char < end)):
            seen.add(name)
            out.append(b)
    return out[:DISTRACTORS_PER_QUESTION]


# Who and where: the kinds a renaming keeps readable. Nationalities and other locations are left
# as they are, since the small spaCy model tags many plain words as them ("Catholic", "Marian").
RENAME_LABELS = ("PERSON", "ORG", "GPE")


def _name_pool(docs) -> dict[tuple[str, bool], list[str]]:
    """Distinct entity names of `docs` by (kind, several words?), in first-seen order."""
    pool: dict[tuple[str, bool], dict[str, None]] = {}
    for doc in docs:
        for e in doc.ents:
            if e.label_ in RENAME_LABELS and e.text.strip() == e.text:
                pool.setdefault((e.label_, " " in e.text), {})[e.text] = None
    return {k: list(v) for k, v in pool.items()}


def rename_entities(context: str, ents, pool: dict[tuple[str, bool], list[str]], rng) -> dict[str, str]:
    """A consistent renaming of the named entities `ents` of `context`: each distinct name to
    another name of its kind (and word count) from `pool` that `context` does not contain. A
    person's surname alone ("Pacquiao" beside "Manny Pacquiao") follows the full name's new
    surname, so that later mentions still point at the same person."""
    mapping: dict[str, str] = {}
    names = sorted({e.text: e.label_ for e in ents if e.label_ in RENAME_LABELS}.items(), key=lambda kv: -len(kv[0].split()))
    used = set()
    for name, label in names:
        if name in mapping:
            continue
        choices = pool.get((label, " " in name), [])
        for _ in range(8):  # a few draws: most names are not in the paragraph
            new = choices[int(rng.integers(len(choices)))] if choices else None
            if new is None or (new not in context and new not in used):
                break
        else:
            new = None
        if new is None:
            continue
        mapping[name] = new
        used.add(new)
        if label == "PERSON" and " " in name:
            mapping.setdefault(name.split()[-1], new.split()[-1])
    return mapping


def apply_renaming(texts: Sequence[str], mapping: dict[str, str]) -> list[str]:
    """`texts` with every whole-word occurrence of a `mapping` key replaced in one pass (longest
    name first, so "Manny Pacquiao" is not read as "Pacquiao")."""
    if not mapping:
        return list(texts)
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")(?!\w)")
    return [pattern.sub(lambda m: mapping[m.group(1)], t) for t in texts]


def build_renamed_paragraphs(files: Iterable[Path | str], tokenizer, sep_id: int, max_source_len: int,
                             max_target_len: int, max_paragraphs: int = 0, *, copies: int = 1, seed: int = 0,
                             nlp=None) -> list[Paragraph]:
    """`copies` renamed versions of every training paragraph: its people, organisations and places
    consistently replaced (paragraph, questions and answers alike) by other names of their kind
    from the training paragraphs (`rename_entities`). Each copy keeps only the questions the
    renaming touches and whose answer is still a span of the renamed paragraph. With names it has
    never seen together, the model cannot answer "who beat Pacquiao?" from what it memorised
    about the names: only reading the paragraph tells it, which is what QUALS asks of the source."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    nlp = _spacy(nlp)
    raw = first_paragraphs(files, max_paragraphs, read_squad)
    docs = list(nlp.pipe([c for c, _ in raw], batch_size=64, disable=["lemmatizer", "parser", "tagger"]))
    pool = _name_pool(docs)
    renamed = []
    for copy in range(copies):
        rng = np.random.default_rng([seed, 2, copy])
        for (context, qas), doc in zip(raw, docs):
            mapping = rename_entities(context, doc.ents, pool, rng)
            if not mapping:
                continue
            new = apply_renaming([context] + [t.strip() for qa in qas for t in qa], mapping)
            kept = [(q, a) for (q, a), (oq, oa) in zip(zip(new[1::2], new[2::2]), qas)
                    if (q, a) != (oq.strip(), oa.strip()) and a in new[0]]
            if kept:
                renamed.append((new[0], kept))
    return tokenise_paragraphs(renamed, tokenizer, sep_id, max_source_len, max_target_len)


MASK = "[MASK]"
# Opens every infilling input. [MASK] alone did not keep the tasks apart: a model trained without
# this marker (session 19's E) answered plain summaries with rewritten sentences, which carry no
# separator and so fail QUALS's filter. A fixed token at a fixed place is a cue the encoder cannot
# miss; [unused0] occurs in no text.
INFILL_MARKER = "[unused0]"


def mask_recoverable_entities(context: str, span: tuple[int, int], ents) -> str | None:
    """`context` with every named-entity mention (people, organisations, places, nationalities)
    inside the sentence `span` replaced by [MASK], where that name also stands elsewhere in
    `context` (so the paragraph tells which one it is); None when no mention qualifies."""
    a, b = span
    rest = context[:a] + " " + context[b:]
    hits = [e for e in ents if e.label_ in SWAP_LABELS and a <= e.start_char and e.end_char <= b
            and re.search(r"(?<!\w)" + re.escape(e.text) + r"(?!\w)", rest)]
    if not hits:
        return None
    out, at = [], 0
    for e in sorted(hits, key=lambda e: e.start_char):
        out += [context[at : e.start_char], MASK]
        at = e.end_char
    return "".join(out) + context[at:]


def build_infilling_paragraphs(files: Iterable[Path | str], tokenizer, sep_id: int, max_source_len: int,
                               max_target_len: int, max_paragraphs: int = 0, nlp=None) -> list[Paragraph]:
    """Entity infilling: for every training sentence that names a person, organisation, place or
    nationality also named elsewhere in its paragraph, the paragraph with those mentions of the
    sentence masked (`mask_recoverable_entities`) as input and the sentence itself as target (no
    separator). To write it back the decoder must copy the sentence word for word and read from
    the rest of the paragraph who or what fills each role: the two skills QUALS needs to tell a
    role swap from a faithful summary, which SQuAD's ~22k questions train weakly. Each input
    opens with `INFILL_MARKER`, which never occurs when QUALS runs: that keeps this task apart
    from question generation."""
    nlp = _spacy(nlp)
    raw = first_paragraphs(files, max_paragraphs, read_squad)
    docs = nlp.pipe([c for c, _ in raw], batch_size=64, disable=["lemmatizer", "parser", "tagger"])
    sources, sentences = [], []
    for (context, _), doc in zip(raw, docs):
        for span in sentence_spans(context):
            masked = mask_recoverable_entities(context, span, doc.ents)
            if masked is not None:
                sources.append(masked)
                sentences.append(context[span[0] : span[1]])
    marker = tokenizer.convert_tokens_to_ids(INFILL_MARKER)
    src, tgt = _ids(tokenizer, sources), _ids(tokenizer, sentences)
    # A truncated sentence would teach the decoder to stop mid-sentence: leave long ones out.
    return [Paragraph(([marker] + s)[: max_source_len - 1] + [EOS_ID], [t])
            for s, t in zip(src, tgt) if len(t) <= max_target_len - 1]


def _spacy(nlp):
    """`nlp`, or the qags extra's spaCy pipeline when None (loaded only by the options that need it)."""
    if nlp is None:
        from quals_fast.reference.qags import load_spacy

        nlp = load_spacy()
    return nlp


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, verbose=False).input_ids


def epoch_order(paragraphs: Sequence[Paragraph], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(paragraph, question) pairs for one epoch: paragraphs in a seeded random order, each
    paragraph's questions kept together. Depends only on (seed, epoch), which makes resuming exact."""
    rng = np.random.default_rng([seed, epoch])
    order = []
    for p in rng.permutation(len(paragraphs)):
        qs = rng.permutation(len(paragraphs[p].targets))
        order.extend((int(p), int(q)) for q in qs)
    return order


def epoch_batches(paragraphs, seed: int, epoch: int, batch_size: int) -> list[list[tuple[int, int]]]:
    order = epoch_order(paragraphs, seed, epoch)
    # The ragged last batch is dropped so every step sees the same number of questions.
    n = len(order) // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n)]


def steps_per_epoch(paragraphs, batch_size: int) -> int:
    return sum(len(p.targets) for p in paragraphs) // batch_size


def validation_items(paragraphs, max_examples: int) -> list[tuple[int, int]]:
    """A fixed subset of the held-out set (same for every run and seed): all questions of evenly
    spread paragraphs. Whole paragraphs keep validation cheap, since each batch then encodes ~5x
    fewer contexts than a question-level sample would."""
    items = [(p, q) for p, para in enumerate(paragraphs) for q in range(len(para.targets))]
    if not max_examples or len(items) <= max_examples:
        return items
    n_paras = max(1, math.ceil(max_examples * len(paragraphs) / len(items)))
    while True:
        chosen = sorted(set(np.linspace(0, len(paragraphs) - 1, n_paras).round().astype(int).tolist()))
        picked = [(p, q) for p in chosen for q in range(len(paragraphs[p].targets))]
        if len(picked) >= max_examples or n_paras >= len(paragraphs):
            return picked[:max_examples]
        n_paras += 1


def answer_weights(labels: torch.Tensor, weight: float, sep_id: int) -> torch.Tensor:
    """Per-label loss weights: `weight` for the answer (the labels after the separator, the final
    eos included), 1 for the question and the separator; 0 on padding."""
    is_sep = (labels == sep_id).long()
    after_sep = (is_sep.cumsum(1) - is_sep) > 0
    return (1.0 + (float(weight) - 1.0) * after_sep.float()) * (labels != -100)


def collate(paragraphs: Sequence[Paragraph], items: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Encoder tensors hold each distinct paragraph once; `source_index` maps each question row to
    its paragraph row. Decoder input = [eos] + target; labels = target + [eos] (pad = -100)."""
    uniq: dict[int, int] = {}
    for p, _ in items:
        uniq.setdefault(p, len(uniq))
    srcs = [paragraphs[p].source for p in uniq]
    s_len = max(len(s) for s in srcs)
    input_ids = torch.full((len(srcs), s_len), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(srcs), s_len), dtype=torch.long)
    for i, s in enumerate(srcs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
    tgts = [paragraphs[p].targets[q] for p, q in items]
    t_len = max(len(t) for t in tgts) + 1
    dec_in = torch.full((len(tgts), t_len), PAD_ID, dtype=torch.long)
    labels = torch.full((len(tgts), t_len), -100, dtype=torch.long)
    for i, t in enumerate(tgts):
        dec_in[i, : len(t) + 1] = torch.tensor([EOS_ID] + t)
        labels[i, : len(t) + 1] = torch.tensor(t + [EOS_ID])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "source_index": torch.tensor([uniq[p] for p, _ in items], dtype=torch.long),
        "decoder_input_ids": dec_in,
        "decoder_attention_mask": (labels != -100).long(),
        "labels": labels,
    }
