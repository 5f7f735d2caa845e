"""The C++ diverse beam search against the NumPy reference (quals_fast.search_reference) on random
log-prob tables: exact tokens, beams and order, identical float32 scores."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quals_fast._native import core
from quals_fast.generation import GenerationOptions, generate
from quals_fast.search_reference import diverse_beam_step, generate_reference, random_table_step_fn
from table_backend import MemoStepFn, TableBackend


def random_lprobs(rng, shape, ties, neg_inf):
    x = rng.standard_normal(shape).astype(np.float32) * 3
    if ties:
        x = np.round(x)  # many exactly equal scores: exercises the tie rule
    if neg_inf:
        x[rng.random(shape) < 0.2] = -np.inf
    return (x - np.log(np.exp(x.astype(np.float64)).sum(-1, keepdims=True))).astype(np.float32)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), groups=st.sampled_from([1, 2, 3, 4]),
       per_group=st.integers(1, 3), vocab=st.integers(8, 40), step=st.integers(0, 3), ties=st.booleans(),
       neg_inf=st.booleans(), strength=st.sampled_from([0.0, 0.5, 1.25]))
def test_step_matches_reference(seed, batch, groups, per_group, vocab, step, ties, neg_inf, strength):
    rng = np.random.default_rng(seed)
    beams = groups * per_group
    lprobs = random_lprobs(rng, (batch, beams, vocab), ties, neg_inf)
    prev = None if step == 0 else (rng.standard_normal((batch, beams)) * 5).astype(np.float32)
    if ties and prev is not None:
        prev = np.round(prev)
    want = diverse_beam_step(step, lprobs, prev, groups, strength)
    got = core.diverse_beam_step(step, lprobs, prev, groups, strength)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[0], want[0])


def run_both(seed, batch, beams, groups, vocab, min_len, max_len, eos_bias, eos_slope, strength=0.5):
    step_fn = MemoStepFn(random_table_step_fn(seed, vocab, eos_id=2, eos_bias=eos_bias, eos_slope=eos_slope))
    want = generate_reference(step_fn, batch, beams, groups, strength, min_len, max_len,
                              pad_id=1, eos_id=2, decoder_start_id=2)
    options = GenerationOptions(beams, groups, strength, min_len, max_len)
    got = generate(TableBackend(step_fn, vocab), [[5, 2]] * batch, options)
    return got, want


def assert_same(got, want):
    assert len(got) == len(want)
    for g_hyps, w_hyps in zip(got, want):
        assert [h.tokens.tolist() for h in g_hyps] == [h.tokens.tolist() for h in w_hyps]
        for g, w in zip(g_hyps, w_hyps):
            np.testing.assert_array_equal(g.positional_scores, w.positional_scores)
            assert g.score == float(w.score)
            assert g.unnormalized_score == pytest.approx(w.unnormalized_score, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), batch=st.integers(1, 3), shape=st.sampled_from([(4, 4), (6, 3), (6, 1), (5, 5)]),
       vocab=st.integers(13, 30), min_len=st.integers(0, 4), extra=st.integers(1, 8),
       eos=st.sampled_from([(0.0, 0.0), (2.0, 0.5), (-3.0, 1.5)]))
def test_decode_matches_reference(seed, batch, shape, vocab, min_len, extra, eos):
    # vocab >= 13: fairseq's DBS needs 2 * beams-per-group + 1 tokens, and (6, 1) has 6 per group.
    beams, groups = shape
    got, want = run_both(seed, batch, beams, groups, vocab, min_len, min_len + extra, *eos)
    assert_same(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quals_settings_on_table(seed):
    # QUALS's own settings (60 beams, 60 groups, min 8, max 60) with early and forced endings.
    got, want = run_both(seed, 2, 60, 60, 320, 8, 60, eos_bias=-4.0, eos_slope=0.35 + 0.1 * seed)
    assert_same(got, want)
    lengths = {len(h.tokens) for hyps in got for h in hyps}
    assert min(lengths) >= 9 and max(lengths) <= 61 and len(lengths) > 3


def test_batching_does_not_change_results():
    got_batched, _ = run_both(7, 3, 8, 4, 40, 2, 12, 1.0, 0.6)
    step_fn = MemoStepFn(random_table_step_fn(7, 40, eos_id=2, eos_bias=1.0, eos_slope=0.6))
    opts = GenerationOptions(8, 4, 0.5, 2, 12)
    # Input i of the table is keyed by its batch position, so decode each alone via a shifted key.
    for i in range(3):
        single = generate(TableBackend(lambda a, p, i=i: step_fn(a + i, p), 40), [[5, 2]], opts)[0]
        assert [h.tokens.tolist() for h in single] == [h.tokens.tolist() for h in got_batched[i]]
        assert [h.score for h in single] == [h.score for h in got_batched[i]]


# ---------------------------------------------------------------- boundary checks
def make_search(batch=1, vocab=16, beams=4, groups=2):
    return core.DiverseBeamSearch(batch=batch, vocab_size=vocab, num_beams=beams, num_groups=groups,
                                  diversity_strength=0.5, pad_id=1, eos_id=2, min_len=1, max_len=5)


def test_step_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="float32"):
        make_search().step(np.zeros((4, 16), dtype=np.float64))


def test_step_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(4, 16\)"):
        make_search().step(np.zeros((3, 16), dtype=np.float32))


def test_step_rejects_non_contiguous():
    lp = np.zeros((4, 32), dtype=np.float32)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        make_search().step(lp)


def test_step_accepts_row_strided_view():
    # A view that skips columns at the end of each row is fine: rows are addressed by stride.
    big = np.log(np.full((4, 20), 1 / 16, dtype=np.float32))
    rows, tokens, done = make_search().step(big[:, :16])
    assert len(rows) == 4 and not done


def test_bad_configuration_is_reported():
    with pytest.raises(ValueError, match="num_groups"):
        make_search(beams=4, groups=3)
    with pytest.raises(ValueError, match="vocab"):
        make_search(vocab=4, beams=4, groups=1)
    with pytest.raises(ValueError, match="batch"):
        make_search(batch=0)
    # fairseq would quietly shrink the beam to vocab_size - 1; the engine refuses instead.
    with pytest.raises(ValueError, match="must be below vocab_size"):
        make_search(vocab=4, beams=4, groups=4)


def test_step_after_done_raises():
    s = core.DiverseBeamSearch(batch=1, vocab_size=16, num_beams=2, num_groups=2, diversity_strength=0.5,
                               pad_id=1, eos_id=2, min_len=0, max_len=1)
    lp = np.log(np.full((2, 16), 1 / 16, dtype=np.float32))
    done = False
    while not done:
        _, _, done = s.step(lp)
    with pytest.raises(RuntimeError, match="finished"):
        s.step(lp)
