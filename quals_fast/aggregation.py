"""Aggregation stage: QUALS = mean over kept pairs of (source score - summary score)."""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# What the reference writes for a summary none of whose QA pairs survives the filter.
REFERENCE_NO_PAIR_SCORE = -1e5


@dataclass(frozen=True)
class AggregationOptions:
    """Settings of the aggregation into one score per summary.

    ``no_pair_score``: the score of a summary none of whose QA pairs survived the filter. None
    (default) reports no score, with the reason; the reference writes -1e5."""

    no_pair_score: Optional[float] = None

    def __post_init__(self):
        if self.no_pair_score is not None and not isinstance(self.no_pair_score, (int, float)):
            raise TypeError("no_pair_score must be a number or None, got %r" % (self.no_pair_score,))


def quals(source_scores: Sequence[float], summary_scores: Sequence[float],
          options: AggregationOptions = AggregationOptions()) -> Optional[float]:
    if len(source_scores) != len(summary_scores):
        raise ValueError("source and summary scores differ in length")
    if not len(source_scores):
        return None if options.no_pair_score is None else float(options.no_pair_score)
    diff = np.asarray(source_scores, dtype=np.float64) - np.asarray(summary_scores, dtype=np.float64)
    return float(diff.mean())
