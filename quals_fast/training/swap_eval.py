"""Held-out role-swap discrimination of a QAGen model: does QUALS rank a faithful sentence above
the same sentence with two of its named entities swapped?

The pairs come from SQuAD dev-b (never trained on), so that checkpoints can be compared on the
failure QUALS exists to catch (who did what) without touching the human-labelled QAGS sets or the
hand-written pairs of `examples/pairs.jsonl` that the tests check. For evenly spread dev-b
paragraphs, the first sentence holding two distinct named entities of one kind (people,
organisations, places, nationalities) gives the faithful "summary" (the sentence verbatim) and the
swapped one (the two entities exchanged); the source is the whole paragraph. With --news-file the
pairs come from real news summaries instead (`build_news_swap_pairs`), or with --faithful article from
the articles' own sentences. With --teacher-forced it measures the reader alone (`teacher_forced_swaps`)."""
import argparse
import json
from pathlib import Path

from quals_fast.training.qagen_data import SWAP_LABELS, VALID_FILE, exchange, read_squad, sentence_spans, swappable
from quals_fast.training.qagen_eval import print_report

def _swap(sentence: str, doc, source: str | None = None) -> str:
    """`sentence` with its first two exchangeable named entities (`swappable`) exchanged, or "".
    With `source`, both entities must also appear in it: the swap then exchanges the roles of the
    article's own participants, as a summary that garbles who did what would."""
    ents = [e for e in doc.ents if e.label_ in SWAP_LABELS and (source is None or e.text in source)]
    for i, a in enumerate(ents):
        for b in ents[i + 1:]:
            if swappable(sentence, a, b):
                return exchange(sentence, a, b)
    return ""


def build_swap_pairs(data_dir, n: int = 40, nlp=None) -> list:
    """[{"id", "source", "faithful", "swapped"}]: at most one pair per paragraph, paragraphs
    visited evenly spread over dev-b (so the set is the same for every model and run)."""
    if nlp is None:
        from quals_fast.reference.qags import load_spacy

        nlp = load_spacy()
    raw = read_squad(Path(data_dir) / VALID_FILE)
    stride = max(1, len(raw) // (2 * n))
    order = list(range(0, len(raw), stride)) + [i for i in range(len(raw)) if i % stride]
    pairs = []
    for p in order:
        context = raw[p][0]
        sentences = [context[a:b] for a, b in sentence_spans(context)]
        found = _first_changed(sentences, nlp.pipe(sentences), _swap)
        if found:
            pairs.append({"id": f"dev-b-{p}", "source": context, "faithful": found[1], "swapped": found[2]})
        if len(pairs) == n:
            break
    return pairs


def _first_changed(texts, docs, change, skip: int = 0):
    """(index, text, changed) for the first text that `change(text, doc)` alters after the first
    `skip` such texts, or None."""
    for k, (text, doc) in enumerate(zip(texts, docs)):
        changed = change(text, doc)
        if changed:
            if not skip:
                return k, text, changed
            skip -= 1
    return None


def _substitute(sentence: str, doc, source_doc) -> str:
    """`sentence` with one of its named entities replaced by another of its kind that the article
    names and the sentence does not ("Pacquiao said ..." -> "Mayweather said ..."), or "". The
    entity replaced is the first one the article also names that occurs once in the sentence; its
    replacement, the article's most often named entity of that kind (ties: the first named). A
    summary that credits the wrong participant is the error QUALS exists to catch."""
    lower = sentence.lower()
    counts: dict[tuple[str, str], int] = {}
    for e in source_doc.ents:
        if e.label_ in SWAP_LABELS:
            counts[(e.label_, e.text)] = counts.get((e.label_, e.text), 0) + 1
    by_kind: dict[str, list[str]] = {}
    for (label, text), _ in sorted(counts.items(), key=lambda kv: -kv[1]):  # stable: ties keep first-named order
        by_kind.setdefault(label, []).append(text)
    for e in doc.ents:
        if e.label_ not in SWAP_LABELS or sentence.count(e.text) != 1 or (e.label_, e.text) not in counts:
            continue
        for text in by_kind[e.label_]:
            k = text.lower()
            if k not in lower and k not in e.text.lower() and e.text.lower() not in k:
                return sentence[: e.start_char] + text + sentence[e.end_char :]
    return ""


def build_news_swap_pairs(path, n: int = 40, nlp=None, corruption: str = "swap", faithful: str = "summary",
                          article_skip: int = 0) -> list:
    """The same kind of pairs from a news file of `{id, source, summary}` lines (`../shared/data/news/`):
    the system's summary is the "faithful" one; the unfaithful one exchanges two of its entities
    that the article also names (`corruption="swap"`), or replaces one of them by another
    participant of the article (`"substitute"`, `_substitute`); summaries that allow neither are
    skipped, in file order. Real abstractive summaries of real articles, so closer to what users
    score than a copied sentence; the summaries were written by a system, so "faithful" means "as
    the system wrote it".

    `faithful="article"` takes instead the article's first sentence that allows the corruption
    (verbatim, so faithful for certain; the source is still the whole article): a second pool of
    pairs from the same articles, used when every summary-based pair has already served to choose
    a model. `article_skip` K > 0 passes over each article's first K such sentences: one more fresh
    pool once the first sentences have served."""
    if corruption not in NEWS_CORRUPTIONS:
        raise ValueError(f"corruption must be one of {NEWS_CORRUPTIONS}, got {corruption!r}")
    if faithful not in NEWS_FAITHFUL:
        raise ValueError(f"faithful must be one of {NEWS_FAITHFUL}, got {faithful!r}")
    if not isinstance(article_skip, int) or article_skip < 0 or (article_skip and faithful != "article"):
        raise ValueError(f"article_skip must be an int >= 0, and > 0 only with faithful='article'; got {article_skip!r}")
    if nlp is None:
        from quals_fast.reference.qags import load_spacy

        nlp = load_spacy()
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not all(isinstance(r, dict) and isinstance(r.get("source"), str) and isinstance(r.get("summary"), str) for r in rows):
        raise ValueError(f"{path}: expected JSON lines with string fields 'source' and 'summary'")
    summary_docs = nlp.pipe(r["summary"] for r in rows) if faithful == "summary" else None
    pairs = []
    for r in rows:
        if summary_docs is not None:
            texts, docs = [r["summary"]], [next(summary_docs)]
        else:
            texts = [r["source"][a:b] for a, b in sentence_spans(r["source"])]
            docs = nlp.pipe(texts)
        if corruption == "swap":
            found = _first_changed(texts, docs, lambda text, doc: _swap(text, doc, r["source"]), article_skip)
        else:
            source_doc = nlp(r["source"])
            found = _first_changed(texts, docs, lambda text, doc: _substitute(text, doc, source_doc), article_skip)
        if found:
            k, text, changed = found
            pair_id = f"{Path(path).stem}-{r.get('id', len(pairs))}" + (f"-sentence{k}" if summary_docs is None else "")
            pairs.append({"id": pair_id, "source": r["source"], "faithful": text, "swapped": changed})
            if len(pairs) == n:
                break
    return pairs


NEWS_CORRUPTIONS = ("swap", "substitute")
NEWS_FAITHFUL = ("summary", "article")
PAIR_KEYS = ("id", "source", "faithful", "swapped")


def load_swap_pairs(path, n: int) -> list:
    """The first `n` pairs of a file that `--save-pairs` wrote: a machine without spaCy (a GPU
    box) then scores exactly the set that was built elsewhere."""
    pairs = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(pairs, list) or not all(isinstance(p, dict) and all(isinstance(p.get(k), str) for k in PAIR_KEYS) for p in pairs):
        raise ValueError(f"{path}: expected a JSON list of objects with string fields {PAIR_KEYS}")
    if len(pairs) < n:
        raise ValueError(f"{path} holds {len(pairs)} pairs, {n} asked for")
    return [{k: p[k] for k in PAIR_KEYS} for p in pairs[:n]]


def evaluate_swaps(model_dir=None, data_dir="../shared/data/squad", n: int = 40, batch_size: int = 8,
                   progress: bool = True, scorer=None, pairs=None, device: str = "cpu") -> dict:
    """Share of pairs ranked right (faithful > swapped) among those where both got a QUALS score,
    the mean gap (faithful - swapped, nats/token), and every pair with its two scores. `pairs`
    (from `load_swap_pairs`) replaces building them from dev-b."""
    if scorer is None:
        from quals_fast import QualsScorer

        scorer = QualsScorer(model_dir, device=device)
    pairs = [dict(p) for p in pairs] if pairs is not None else build_swap_pairs(data_dir, n)
    results = scorer.score([p["source"] for p in pairs] * 2, [p["faithful"] for p in pairs] + [p["swapped"] for p in pairs],
                           batch_size=batch_size, progress=progress)
    for p, f, s in zip(pairs, results[: len(pairs)], results[len(pairs):]):
        p["faithful_score"], p["swapped_score"] = f.score, s.score
    scored = [p for p in pairs if p["faithful_score"] is not None and p["swapped_score"] is not None]
    gaps = [p["faithful_score"] - p["swapped_score"] for p in scored]
    return {
        "model": str(scorer.qagen.checkpoint.path),
        "pairs": len(pairs),
        "scored_pairs": len(scored),
        "ranked_right": sum(g > 0 for g in gaps) / len(gaps) if gaps else None,
        "mean_gap": sum(gaps) / len(gaps) if gaps else None,
        "items": [{k: p[k] for k in ("id", "faithful", "swapped", "faithful_score", "swapped_score")} for p in pairs],
    }


def teacher_forced_swaps(model_dir=None, data_dir="../shared/data/squad", paragraphs: int = 300, batch_size: int = 32,
                         device: str = "cpu") -> dict:
    """The reader alone, without generation or selection: gold dev-b questions whose answer is a
    named entity with another of its kind in its sentence, teacher-forced given their paragraph,
    against the same question with the other entity as the answer (`wrong_answer`) and against
    the paragraph with the two entities exchanged (`swapped_paragraph`), and, from any question
    whose answer is one entity, against up to two entities of its kind from the whole paragraph
    as the answer (`distractor`); `build_swap_contrast` over the first `paragraphs` dev-b paragraphs. For each: pairs, share with the true side more likely,
    mean gap (nats/token). Four seeds of one recipe agree here to within 0.02, where QUALS on
    summaries moves by far more, so it screens a recipe in minutes."""
    import torch

    from quals_fast.checkpoint import default_model_dir
    from quals_fast.training.qagen import evaluate_contrast
    from quals_fast.training.qagen_data import as_model_reads, build_swap_contrast
    from quals_fast.training.warmstart import load_qagen_for_training

    path = str(model_dir or default_model_dir())
    model, tok = load_qagen_for_training(path)
    model.to(device)
    sep = model.config.qagen_separator_token_id
    max_source = min(512, model.config.max_position_embeddings)
    out = {"model": path, "paragraphs": paragraphs}
    for kind, name in (("paragraph", "swapped_paragraph"), ("answer", "wrong_answer"), ("distractor", "distractor")):
        pairs = as_model_reads(build_swap_contrast([Path(data_dir) / VALID_FILE], tok, sep, max_source, 64, paragraphs,
                                                   kind=kind), model.config, max_source)
        r = evaluate_contrast(model, pairs, batch_size, torch.device(device), "fp32")
        out[name] = {"pairs": r["val_swap_pairs"], "ranked_right": r["val_swap_right"], "mean_gap": r["val_swap_gap"]}
    return out


def register_cli(subparsers):
    p = subparsers.add_parser("eval-swaps", help="held-out role-swap discrimination of a QAGen model (SQuAD dev-b or news summaries)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="QAGen model folder (default: the embedded model)")
    p.add_argument("--data-dir", default="../shared/data/squad", help="folder holding %s" % VALID_FILE)
    p.add_argument("--pairs", type=int, default=40, help="number of (faithful, swapped) pairs (default 40)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    p.add_argument("--news-file", default=None, help="build the pairs from this news file of {id, source, summary} lines "
                   "(e.g. ../shared/data/news/xsum_1000.jsonl) instead of SQuAD dev-b")
    p.add_argument("--corruption", default="swap", choices=NEWS_CORRUPTIONS,
                   help="with --news-file: exchange two entities of the summary (swap), or replace one by another "
                   "participant the article names (substitute)")
    p.add_argument("--faithful", default="summary", choices=NEWS_FAITHFUL,
                   help="with --news-file: the faithful text is the system's summary, or the article's first sentence "
                   "that allows the corruption (verbatim)")
    p.add_argument("--article-skip", type=int, default=0,
                   help="with --faithful article: pass over each article's first N sentences that allow the corruption "
                   "(a fresh pool once those have served)")
    p.add_argument("--pairs-file", default=None, help="score the pairs of this file (written by --save-pairs) instead of building them (needs no spaCy)")
    p.add_argument("--save-pairs", default=None, help="write the built pairs to this JSON file and stop")
    p.add_argument("--output", default=None, help="also write the figures and every pair's scores to this JSON file")
    p.add_argument("--teacher-forced", action="store_true",
                   help="score the reader alone on gold dev-b questions (the answer's entity against another of its kind, "
                   "teacher-forced) instead of QUALS on summaries; --pairs then counts the dev-b paragraphs scanned "
                   "(300 in the experiment log)")
    p.add_argument("--no-progress", action="store_true")

    def run(args):
        if args.pairs < 1:
            raise SystemExit("eval-swaps: --pairs must be >= 1")
        if args.teacher_forced:
            if args.news_file or args.pairs_file or args.save_pairs:
                raise SystemExit("eval-swaps: --teacher-forced reads SQuAD dev-b; it excludes --news-file, --pairs-file and --save-pairs")
            print_report(teacher_forced_swaps(args.model, args.data_dir, args.pairs, max(2, args.batch_size), args.device),
                         args.output)
            return 0
        if args.pairs_file and (args.save_pairs or args.news_file):
            raise SystemExit("eval-swaps: --pairs-file excludes --save-pairs and --news-file")
        if not args.news_file and (args.corruption, args.faithful, args.article_skip) != ("swap", "summary", 0):
            raise SystemExit("eval-swaps: --corruption, --faithful and --article-skip apply only with --news-file")
        try:
            pairs = (load_swap_pairs(args.pairs_file, args.pairs) if args.pairs_file
                     else build_news_swap_pairs(args.news_file, args.pairs, corruption=args.corruption,
                                                 faithful=args.faithful, article_skip=args.article_skip) if args.news_file
                     else None)
        except (OSError, ValueError) as e:
            raise SystemExit(f"eval-swaps: {e}")
        if args.save_pairs:
            pairs = pairs if pairs is not None else build_swap_pairs(args.data_dir, args.pairs)
            Path(args.save_pairs).parent.mkdir(parents=True, exist_ok=True)
            Path(args.save_pairs).write_text(json.dumps(pairs, indent=1) + "\n", encoding="utf-8")
            print(f"wrote {len(pairs)} pairs to {args.save_pairs}")
            return 0
        result = evaluate_swaps(args.model, args.data_dir, args.pairs, args.batch_size, progress=not args.no_progress,
                                pairs=pairs, device=args.device)
        print_report(result, args.output)
        return 0

    p.set_defaults(func=run)
    return p
