"""Rescoring stage: teacher-forced log-probs of the kept QA pairs given the source document.

A document is encoded once and all of its pairs are scored in one padded decoder forward that
shares that encoding; several documents go through the backend together."""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class RescoringOptions:
    """Settings of the teacher-forced rescoring against the source.

    ``max_source_tokens``: sources are cut to this many tokens, EOS included (the reference cuts
    at 1024, BART's positions; a model with fewer positions cuts at its own limit).
    ``rescoring_batch_size``: documents whose pairs are scored in one padded forward."""

    max_source_tokens: int = 1024
    rescoring_batch_size: int = 8

    def __post_init__(self):
        if not isinstance(self.max_source_tokens, int) or self.max_source_tokens < 2:
            raise ValueError("max_source_tokens must be an int >= 2, got %r" % (self.max_source_tokens,))
        if not isinstance(self.rescoring_batch_size, int) or self.rescoring_batch_size < 1:
            raise ValueError("rescoring_batch_size must be an int >= 1, got %r" % (self.rescoring_batch_size,))


@dataclass(frozen=True)
class TargetScore:
    positional_scores: np.ndarray  # float32 log-prob of every target token, EOS included
    score: float                   # their mean


def truncate_with_eos(ids: Sequence[int], limit: int, eos_id: int) -> Tuple[List[int], bool]:
    """The reference's truncation: keep `limit` tokens and make the last kept one EOS."""
    ids = list(ids)
    if len(ids) <= limit:
        return ids, False
    ids = ids[:limit]
    ids[-1] = eos_id
    return ids, True


def rescore(backend, source_ids: Sequence[Sequence[int]], targets: Sequence[Sequence[Sequence[int]]],
            options: RescoringOptions = RescoringOptions()) -> List[List[TargetScore]]:
    """Scores targets[i] against source_ids[i] for every i; sources without targets cost nothing."""
    if len(source_ids) != len(targets):
        raise ValueError("got %d sources but %d target lists" % (len(source_ids), len(targets)))
    out: List[List[TargetScore]] = [[] for _ in source_ids]
    todo = [i for i, ts in enumerate(targets) if len(ts)]
    # Sorting by source length keeps padding low inside each batch.
    todo.sort(key=lambda i: len(source_ids[i]))
    for start in range(0, len(todo), options.rescoring_batch_size):
        chunk = todo[start: start + options.rescoring_batch_size]
        scored = backend.score_targets([source_ids[i] for i in chunk], [targets[i] for i in chunk])
        for i, per_target in zip(chunk, scored):
            out[i] = [TargetScore(p, float(np.mean(p, dtype=np.float64))) for p in per_target]
    return out
