"""quals-fast: fast, exact QUALS factual-consistency scoring.

    from quals_fast import QualsScorer
    QualsScorer().score(sources, summaries)
"""
from quals_fast._native import core as _core  # noqa: F401  (fails early, with the rebuild command)
from quals_fast.generation import GenerationOptions, Hypothesis
from quals_fast.qagen import QAGen
from quals_fast.rescoring import RescoringOptions, TargetScore
from quals_fast.aggregation import AggregationOptions
from quals_fast.selection import QAPair, SelectionOptions, select_qa_pairs
from quals_fast.scorer import QualsResult, QualsScorer, ScoredPair

__version__ = "0.1.0"

__all__ = [
    "QAGen", "QualsScorer", "QualsResult", "ScoredPair", "select_qa_pairs", "QAPair", "Hypothesis", "TargetScore",
    "GenerationOptions", "SelectionOptions", "RescoringOptions", "AggregationOptions",
]
