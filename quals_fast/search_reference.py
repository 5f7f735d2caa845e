"""Plain NumPy reference of fairseq 0.9's diverse beam search as QUALS runs it.

This module is an oracle, not an engine: the C++ search core is tested against it on
random inputs, so it favours obviousness over speed. It restates three pieces of
fairseq 0.9 (the version bundled with the QUALS code):

* ``BeamSearch.step`` and ``DiverseBeamSearch.step`` (``fairseq/search.py``), as the
  pure function :func:`diverse_beam_step`;
* the loop and bookkeeping of ``SequenceGenerator._generate``
  (``fairseq/sequence_generator.py``), as :func:`generate_reference`, restricted to the
  settings QUALS uses: no prefix tokens, no n-gram blocking, no sampling, temperature 1,
  unknown-word penalty 0, normalised scores;
* nothing else: the model is a callback, so any model (or a random table, see
  :func:`random_table_step_fn`) can drive it.

Arithmetic is float32 wherever fairseq's tensors are float32, in fairseq's order, so that
scores agree to the last bit with an implementation that follows the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

__all__ = [
    "ReferenceHypothesis",
    "cands_per_group",
    "diverse_beam_step",
    "generate_reference",
    "random_table_step_fn",
    "StepFn",
]

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ReferenceHypothesis:
    tokens: np.ndarray  # int64: generated ids including the final eos, without the start token
    positional_scores: np.ndarray  # float32, one per token, diversity penalties included
    score: np.float32  # final cumulative score / len(tokens) ** len_penalty
    unnormalized_score: float  # float(score) * len(tokens): what the QUALS code stores


def cands_per_group(step: int, num_beams: int, num_groups: int, vocab_size: int) -> int:
    """How many candidates each group's BeamSearch returns at ``step``.

    fairseq takes twice the group's beams but never the whole flattened row
    (``flat - 1``), so that pad, which is always -inf, can never be selected. At step 0
    only the group's first beam is searched, so the flattened row is one vocabulary long.
    """
    beams_per_group = num_beams // num_groups
    flat_size = vocab_size if step == 0 else beams_per_group * vocab_size
    return min(2 * beams_per_group, flat_size - 1)


def _topk_desc(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of a 1-D array, best first.

    torch.topk leaves the order of equal values unspecified; this reference breaks ties
    by the lower index (a stable sort of the negated values), and the C++ core does the
    same. The golden vectors were chosen so that no near-tie decides anything, so the
    choice only matters for random tables, where both sides must simply agree.
    """
    return np.argsort(-values, kind="stable")[:k]


def diverse_beam_step(
    step: int,
    lprobs: np.ndarray,
    prev_scores: Optional[np.ndarray],
    num_groups: int,
    diversity_strength: float,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of fairseq's DiverseBeamSearch (Hamming diversity) over BeamSearch.

    Args:
        step: search step, starting at 0.
        lprobs: float32 [B, K, V], masked log-probabilities of the live beams.
        prev_scores: float32 [B, K], cumulative score of each live beam; None at step 0.
        num_groups: G; K must be a multiple of G. Group g owns beam slots g, g+G, ...
        diversity_strength: the positive strength (fairseq stores it negated).

    Returns:
        (cand_scores float32, cand_tokens int64, cand_beams int64), each [B, G * k] with
        k = :func:`cands_per_group`; column ``j * G + g`` holds rank j of group g and
        cand_beams are global beam slots.
    """
    lprobs = np.asarray(lprobs)
    if lprobs.dtype != np.float32 or lprobs.ndim != 3:
        raise ValueError("lprobs must be float32 [B, K, V]")
    if np.isnan(lprobs).any():
        # torch.topk ranks NaN above everything; the generator replaces NaN by -inf first.
        raise ValueError("lprobs must not contain NaN")
    B, K, V = lprobs.shape
    if K % num_groups != 0:
        raise ValueError("num_beams must be divisible by num_groups")
    if step > 0:
        if prev_scores is None:
            raise ValueError("prev_scores is required after step 0")
        prev_scores = np.asarray(prev_scores)
        if prev_scores.dtype != np.float32 or prev_scores.shape != (B, K):
            raise ValueError("prev_scores must be float32 [B, K]")

    G = num_groups
    bg = K // G
    k = cands_per_group(step, K, G, V)
    neg_strength = np.float32(-diversity_strength)

    out_scores = np.empty((B, k, G), dtype=np.float32)
    out_tokens = np.empty((B, k, G), dtype=np.int64)
    out_beams = np.empty((B, k, G), dtype=np.int64)

    for b in range(B):
        # Reset every step: the penalty only counts what earlier groups chose this step.
        diversity = np.zeros(V, dtype=np.float32)
        for g in range(G):
            group_lprobs = lprobs[b, g::G, :].copy()  # [bg, V]
            if g > 0:
                group_lprobs = group_lprobs + neg_strength * diversity
            if step == 0:
                # All beams are copies of the start token, so fairseq searches only the
                # group's first one (otherwise every candidate would appear bg times).
                flat = group_lprobs[:1].reshape(-1)
            else:
                # The penalty is added before the cumulative score, as fairseq does.
                group_prev = prev_scores[b, g::G]
                flat = (group_lprobs + group_prev[:, None]).reshape(-1)
            best = _topk_desc(flat, k)
            local_beams = best // V
            tokens = best % V
            out_scores[b, :, g] = flat[best]
            out_tokens[b, :, g] = tokens
            out_beams[b, :, g] = local_beams * G + g
            # Every candidate counts, runners-up and eos included, and a token chosen by
            # two beams of the group counts twice (fairseq's scatter_add_).
            np.add.at(diversity, tokens, np.float32(1.0))

    # [B, k, G] -> [B, k * G]: fairseq's stack(dim=2).view(B, -1) interleaving.
    return (
        out_scores.reshape(B, k * G),
        out_tokens.reshape(B, k * G),
        out_beams.reshape(B, k * G),
    )


def generate_reference(
    step_fn: StepFn,
    batch_size: int,
    num_beams: int = 60,
    num_groups: int = 60,
    diversity_strength: float = 0.5,
    min_len: int = 8,
    max_len: int = 60,
    *,
    pad_id: int,
    eos_id: int,
    decoder_start_id: int,
    len_penalty: float = 1.0,
) -> List[List[ReferenceHypothesis]]:
    """Decode ``batch_size`` inputs the way fairseq's SequenceGenerator does with DBS.

    ``step_fn(active_inputs, prefixes)`` gets the original indices of the inputs still
    being decoded (int64 [n_active]) and their live prefixes (int64
    [n_active * num_beams, step + 1], input-major, starting with ``decoder_start_id``)
    and returns float32 log-probabilities [n_active * num_beams, V].

    Returns, per input, its finished hypotheses sorted by normalised score, best first
    (stable: equal scores keep the order in which they were finalised).
    """
    K = num_beams
    G = num_groups
    if K % G != 0:
        raise ValueError("num_beams must be divisible by num_groups")
    if not 0 <= min_len <= max_len:
        raise ValueError("need 0 <= min_len <= max_len (fairseq asserts min_len <= max_len)")
    bg = K // G

    # No fairseq "blacklist" here. fairseq marks a live slot as blacklisted only when
    # fewer than K of an input's candidates are non-eos, so it must pick finished ones to
    # fill the beam. That cannot happen once every group returns its full 2*bg candidates
    # (guaranteed by the V check below, since the smallest flattened row is V long):
    # candidates of one group have distinct flat indices beam * V + token, so at most one
    # eos per beam, i.e. at most bg (at step 0, 1) of the group's 2*bg; over the G groups
    # at most K of the 2K columns are eos, leaving at least K live ones. The blacklist
    # therefore stays all-False from its all-False start, and the assert in the loop
    # checks the "at least K live" premise at every step.
    # (fairseq would also cap K at V - 1, which the same check makes a no-op.)

    active = np.arange(batch_size, dtype=np.int64)  # original indices of live inputs
    tokens = np.full((batch_size * K, 1), decoder_start_id, dtype=np.int64)
    # Cumulative score after each generated token: scores[:, i] follows tokens[:, i + 1].
    scores = np.zeros((batch_size * K, 0), dtype=np.float32)
    finalized: List[List[ReferenceHypothesis]] = [[] for _ in range(batch_size)]
    vocab_size: Optional[int] = None

    for step in range(max_len + 1):  # one extra step, where only eos is allowed
        n_active = len(active)
        lprobs = np.array(step_fn(active.copy(), tokens.copy()), dtype=np.float32, copy=True)
        if lprobs.ndim != 2 or lprobs.shape[0] != n_active * K:
            raise ValueError("step_fn must return float32 [n_active * num_beams, V]")
        V = lprobs.shape[1]
        if vocab_size is None:
            vocab_size = V
            if not 0 <= pad_id < V or not 0 <= eos_id < V:
                raise ValueError("pad_id and eos_id must be vocabulary ids")
            if 2 * bg > V - 1 or K > V - 1:
                raise ValueError(
                    "need vocab_size >= max(2 * num_beams / num_groups, num_beams) + 1 "
                    "(see the blacklist note above)"
                )
        elif V != vocab_size:
            raise ValueError("step_fn changed the vocabulary size")

        # The generator's masks, in its order; all fairseq's other masks are no-ops for
        # QUALS (unk penalty 0, no prefix tokens, no n-gram blocking).
        lprobs[np.isnan(lprobs)] = -np.inf
        lprobs[:, pad_id] = -np.inf
        if step >= max_len:
            eos_column = lprobs[:, eos_id].copy()
            lprobs[:, :] = -np.inf
            lprobs[:, eos_id] = eos_column
        elif step < min_len:
            lprobs[:, eos_id] = -np.inf

        prev = scores[:, step - 1].reshape(n_active, K) if step > 0 else None
        cand_scores, cand_tokens, cand_beams = diverse_beam_step(
            step, lprobs.reshape(n_active, K, V), prev, G, diversity_strength
        )
        n_cands = cand_scores.shape[1]

        # A finite eos ends a hypothesis; an eos scored -inf (blocked by min_len) does not
        # and, below, even counts as a live candidate, exactly as in fairseq.
        is_eos = (cand_tokens == eos_id) & (cand_scores != -np.inf)

        # Finalise: only eos among the first K columns, in column order.
        newly_finished = []
        for a in range(n_active):
            sent = int(active[a])
            seen = False
            for c in range(K):
                if not is_eos[a, c]:
                    continue
                seen = True
                row = a * K + int(cand_beams[a, c])
                prefix = tokens[row, 1 : step + 1]
                # fairseq asserts this; it holds because finite eos never becomes live.
                assert not (prefix == eos_id).any()
                cumulative = np.append(scores[row, :step], cand_scores[a, c]).astype(np.float32)
                positional = cumulative.copy()
                positional[1:] = cumulative[1:] - cumulative[:-1]
                # fairseq divides the float32 eos score in place, before .tolist().
                score = np.float32(
                    cand_scores[a, c] / np.float32((step + 1) ** len_penalty)
                )
                if len(finalized[sent]) < K:
                    finalized[sent].append(
                        ReferenceHypothesis(
                            tokens=np.append(prefix, eos_id).astype(np.int64),
                            positional_scores=positional,
                            score=score,
                            unnormalized_score=float(score) * (step + 1),
                        )
                    )
            # fairseq only checks the inputs that finalised something this step.
            if seen and (len(finalized[sent]) == K or step == max_len):
                newly_finished.append(a)

        keep = [a for a in range(n_active) if a not in newly_finished]
        if not keep:
            break
        # fairseq asserts step < max_len here: at the last step every live beam's only
        # finite entry is eos, so every input finishes unless a live beam scored -inf.
        assert step < max_len, "an input reached max_len without finishing (a -inf beam)"

        # Next live beams: per kept input, the first K columns (any, runners-up included)
        # that are not a finite eos.
        new_tokens = np.empty((len(keep) * K, step + 2), dtype=np.int64)
        new_scores = np.empty((len(keep) * K, step + 1), dtype=np.float32)
        for i, a in enumerate(keep):
            live_cols = [c for c in range(n_cands) if not is_eos[a, c]][:K]
            assert len(live_cols) == K  # the premise of the blacklist note
            for slot, c in enumerate(live_cols):
                src = a * K + int(cand_beams[a, c])
                dst = i * K + slot
                new_tokens[dst, : step + 1] = tokens[src]
                new_tokens[dst, step + 1] = cand_tokens[a, c]
                new_scores[dst, :step] = scores[src]
                new_scores[dst, step] = cand_scores[a, c]
        active = active[keep]
        tokens = new_tokens
        scores = new_scores

    # Python's sort is stable, also with reverse=True, as fairseq relies on.
    return [sorted(hypos, key=lambda h: float(h.score), reverse=True) for hypos in finalized]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_table_step_fn(
    seed: int,
    vocab_size: int,
    *,
    eos_id: int = 2,
    logit_scale: float = 2.0,
    eos_bias: float = 0.0,
    eos_slope: float = 0.0,
) -> StepFn:
    """A deterministic pseudo-model for tests: (input, prefix) -> log-softmax row.

    Each row's logits are Gumbel noise times ``logit_scale`` (a heavy right tail, so
    rows are peaked like a language model's), keyed by a hash of (seed, input index,
    prefix), so the same prefix of the same input always gets the same row no matter
    which beam slot or batch position it sits in. ``eos_bias + eos_slope * step`` is
    added to the eos logit, where step = len(prefix) - 1: a growing bias makes
    hypotheses end early and at varied lengths. The log-softmax is computed in float64
    and rounded once to float32.
    """
    token_ids = np.arange(vocab_size, dtype=np.uint64)

    def step_fn(active_inputs: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        active_inputs = np.asarray(active_inputs, dtype=np.int64)
        prefixes = np.asarray(prefixes, dtype=np.int64)
        n_rows, length = prefixes.shape
        beams = n_rows // len(active_inputs)
        out = np.empty((n_rows, vocab_size), dtype=np.float32)
        for r in range(n_rows):
            key = np.array([seed, active_inputs[r // beams]], dtype=np.int64).tobytes()
            digest = hashlib.blake2b(key + prefixes[r].tobytes(), digest_size=8).digest()
            row_key = np.uint64(int.from_bytes(digest, "little"))
            bits = _splitmix64(token_ids * np.uint64(0x2545F4914F6CDD1D) ^ row_key)
            # 53 random bits -> uniform in (0, 1), never exactly 0 or 1.
            uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
            logits = logit_scale * -np.log(-np.log(uniform))
            logits[eos_id] += eos_bias + eos_slope * (length - 1)
            shifted = logits - logits.max()
            out[r] = (shifted - np.log(np.exp(shifted).sum())).astype(np.float32)
        return out

    return step_fn
