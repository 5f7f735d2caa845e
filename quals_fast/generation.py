"""Generation stage: diverse beam search over a backend, driven by the C++ core.

Per decode step there is exactly one call into the backend (log-probs for the live rows) and one
into the C++ core (search step + bookkeeping, GIL released)."""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from quals_fast._native import core


@dataclass(frozen=True)
class GenerationOptions:
    """QUALS's settings for QA generation (the reference run of the paper)."""

    num_beams: int = 60
    num_groups: int = 60
    diversity_strength: float = 0.5
    min_len: int = 8
    max_len: int = 60
    len_penalty: float = 1.0

    def __post_init__(self):
        for name in ("num_beams", "num_groups", "min_len", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError("%s must be an int, got %r" % (name, value))
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1, got %d" % self.num_beams)
        if self.num_groups < 1 or self.num_beams % self.num_groups:
            raise ValueError("num_groups (%d) must divide num_beams (%d)" % (self.num_groups, self.num_beams))
        if self.min_len < 0 or self.max_len < 1 or self.min_len > self.max_len:
            raise ValueError("need 0 <= min_len <= max_len and max_len >= 1, got min_len=%d max_len=%d"
                             % (self.min_len, self.max_len))
        for name in ("diversity_strength", "len_penalty"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError("%s must be finite" % name)


@dataclass(frozen=True)
class Hypothesis:
    tokens: np.ndarray             # int64, generated ids with the final EOS, without the start token
    positional_scores: np.ndarray  # float32, per token, diversity penalties included (as fairseq)
    score: float                   # cumulative score / length ** len_penalty
    unnormalized_score: float      # score * length, the QUALS code's convention

    @classmethod
    def from_core(cls, item) -> "Hypothesis":
        tokens, positional, score = item
        return cls(tokens, positional, float(score), float(score) * len(tokens))


def effective_max_len(options: GenerationOptions, max_target_positions: int) -> int:
    # fairseq never generates past the decoder's positions: one is taken by the start token.
    return min(options.max_len, max_target_positions - 1)


def generate(backend, input_ids: Sequence[Sequence[int]], options: GenerationOptions) -> List[List[Hypothesis]]:
    """Diverse beam search for a batch of already-tokenised inputs (each ending with EOS)."""
    spec = backend.spec
    search = core.DiverseBeamSearch(
        batch=len(input_ids), vocab_size=spec.vocab_size, num_beams=options.num_beams,
        num_groups=options.num_groups, diversity_strength=options.diversity_strength, pad_id=spec.pad_id,
        eos_id=spec.eos_id, min_len=options.min_len, max_len=effective_max_len(options, spec.max_target_positions),
        len_penalty=options.len_penalty,
    )
    state = backend.encode(input_ids, options.num_beams)
    tokens = np.full(len(input_ids) * options.num_beams, spec.decoder_start_id, dtype=np.int64)
    source_rows = None
    done = False
    while not done:
        lprobs = backend.decoder_step(state, tokens, source_rows)
        source_rows, tokens, done = search.step(lprobs)
    return [[Hypothesis.from_core(h) for h in search.results(i)] for i in range(len(input_ids))]
