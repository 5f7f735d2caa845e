"""QualsScorer: text -> ids -> generate -> select -> rescore -> score, batch by batch."""
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

from quals_fast.aggregation import REFERENCE_NO_PAIR_SCORE, AggregationOptions, quals
from quals_fast.generation import GenerationOptions
from quals_fast.generation import generate as _generate
from quals_fast.qagen import QAGen
from quals_fast.rescoring import RescoringOptions, rescore
from quals_fast.selection import SelectionOptions, select_qa_pairs

STAGE_OPTIONS = (GenerationOptions, SelectionOptions, RescoringOptions, AggregationOptions)


def split_options(options: dict):
    """Route flat keyword options to the stage dataclass that owns each name."""
    owned = {}
    for cls in STAGE_OPTIONS:
        for f in dataclasses.fields(cls):
            owned[f.name] = cls
    unknown = sorted(set(options) - set(owned))
    if unknown:
        raise TypeError("unknown option(s): %s; known: %s" % (", ".join(unknown), ", ".join(sorted(owned))))
    return [cls(**{k: v for k, v in options.items() if owned[k] is cls}) for cls in STAGE_OPTIONS]


@dataclass(frozen=True)
class Candidate:
    text: str
    score: float
    unnormalized_score: float


@dataclass
class ScoredPair:
    question: str
    answer: str
    summary_score: float        # normalized generation score (diversity penalties included, as the reference)
    source_score: float         # mean teacher-forced log-prob given the source
    tokens: List[int]
    token_strings: List[str]
    summary_token_scores: List[float]
    source_token_scores: List[float]

    @property
    def delta(self) -> float:
        return self.source_score - self.summary_score


@dataclass
class QualsResult:
    score: Optional[float]
    pairs: List[ScoredPair] = field(default_factory=list)
    reason: Optional[str] = None    # why there is no score (or why it is the reference sentinel)
    error: Optional[str] = None     # the input was rejected
    num_candidates: int = 0
    source_tokens: int = 0
    source_truncated: bool = False
    summary_tokens: int = 0
    summary_truncated: bool = False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for p, pair in zip(d["pairs"], self.pairs):
            p["delta"] = pair.delta
        return d


class InputError(ValueError):
    pass


def validate_pair(source, summary) -> None:
    for name, text in (("source", source), ("summary", summary)):
        if not isinstance(text, str):
            raise InputError("%s must be a string, got %s" % (name, type(text).__name__))
        if not text.strip():
            raise InputError("%s is empty or whitespace only" % name)


class QualsScorer:
    """Scores the factual consistency of summaries against their sources with one QAGen model.

    Keyword options are those of the stage dataclasses (GenerationOptions, SelectionOptions,
    RescoringOptions, AggregationOptions) and map 1:1 to the CLI's flags."""

    def __init__(self, model_dir=None, backend="torch", device="cpu", qagen: QAGen = None,
                 backend_options: Optional[dict] = None, **options):
        self.generation, self.selection, self.rescoring, self.aggregation = split_options(options)
        self.qagen = qagen or QAGen.load(model_dir, backend=backend, device=device,
                                         separator=self.selection.separator, **(backend_options or {}))
        if self.qagen.tokenizer is None:
            raise ValueError("QualsScorer works on text and needs a model folder with a tokenizer; %s has none"
                             % self.qagen.checkpoint.path)

    def score(self, sources: Sequence[str], summaries: Sequence[str], batch_size: int = 8,
              on_error: str = "raise", progress: bool = False) -> List[QualsResult]:
        """One result per (source, summary). on_error="report" turns a bad input into a result
        carrying `.error` instead of raising, so that the other inputs are still scored."""
        return list(self.iter_scores(sources, summaries, batch_size, on_error, progress))

    def iter_scores(self, sources, summaries, batch_size=8, on_error="raise", progress=False) -> Iterator[QualsResult]:
        """Like score(), yielding results in input order as each batch finishes."""
        if isinstance(sources, str) or isinstance(summaries, str):
            raise TypeError("sources and summaries must be lists of strings, not a single string")
        sources, summaries = list(sources), list(summaries)
        if len(sources) != len(summaries):
            raise ValueError("got %d sources but %d summaries" % (len(sources), len(summaries)))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be an int >= 1, got %r" % (batch_size,))
        if on_error not in ("raise", "report"):
            raise ValueError("on_error must be 'raise' or 'report', got %r" % (on_error,))
        errors = {}
        for i, (src, summ) in enumerate(zip(sources, summaries)):
            try:
                validate_pair(src, summ)
            except InputError as exc:
                if on_error == "raise":
                    raise InputError("input %d: %s" % (i, exc)) from None
                errors[i] = str(exc)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="summary", desc="QUALS")
        good = [i for i in range(len(sources)) if i not in errors]
        done = {}
        next_out = 0
        for start in range(0, len(good), batch_size):
            chunk = good[start: start + batch_size]
            for i, res in zip(chunk, self._score_batch([sources[i] for i in chunk], [summaries[i] for i in chunk])):
                done[i] = res
            last = chunk[-1]
            while next_out < len(sources) and (next_out <= last or next_out in errors):
                yield done.pop(next_out) if next_out not in errors else QualsResult(None, error=errors[next_out])
                next_out += 1
            if bar is not None:
                bar.update(len(chunk))
        while next_out < len(sources):
            yield QualsResult(None, error=errors[next_out])
            next_out += 1
        if bar is not None:
            if errors:
                bar.update(len(errors))
            bar.close()

    def _score_batch(self, sources: List[str], summaries: List[str]) -> List[QualsResult]:
        q = self.qagen
        summary_enc = [q.encode_text(s, q.spec.max_source_positions) for s in summaries]
        source_enc = [q.encode_text(s, self.rescoring.max_source_tokens) for s in sources]
        hyps = _generate(q.backend, [ids for ids, _ in summary_enc], self.generation)
        kept_per_input, results = [], []
        for summary, (summ_ids, summ_trunc), (src_ids, src_trunc), hs in zip(summaries, summary_enc, source_enc, hyps):
            candidates = [Candidate(q.decode(h.tokens), h.score, h.unnormalized_score) for h in hs]
            kept = select_qa_pairs(candidates, q.answer_search_text(summary), max_pairs=self.selection.max_pairs,
                                   strict_cap=self.selection.strict_cap,
                                   sep=q.separator)
            kept_per_input.append([(p, hs[p.index]) for p in kept])
            results.append(QualsResult(
                None, num_candidates=len(hs), source_tokens=len(src_ids), source_truncated=src_trunc,
                summary_tokens=len(summ_ids), summary_truncated=summ_trunc))
        scored = rescore(q.backend, [ids for ids, _ in source_enc],
                         [[h.tokens for _, h in kept] for kept in kept_per_input], self.rescoring)
        for res, kept, target_scores in zip(results, kept_per_input, scored):
            res.pairs = [
                ScoredPair(p.question, p.answer, h.score, t.score, [int(x) for x in h.tokens],
                           q.token_strings(h.tokens), [float(x) for x in h.positional_scores],
                           [float(x) for x in t.positional_scores])
                for (p, h), t in zip(kept, target_scores)
            ]
            res.score = quals([p.source_score for p in res.pairs], [p.summary_score for p in res.pairs],
                              self.aggregation)
            if not res.pairs:
                res.reason = "no generated QA pair has its answer verbatim in the summary"
                if res.score == REFERENCE_NO_PAIR_SCORE:
                    res.reason += " (reference sentinel -1e5)"
        return results
