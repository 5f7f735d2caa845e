"""One-pass batched rescoring equals scoring each target alone, and batching never changes results."""
import json

import numpy as np
import pytest

from quals_fast import QAGen, QualsScorer
from quals_fast.rescoring import RescoringOptions, rescore, truncate_with_eos


@pytest.fixture(scope="module")
def oracle_model(oracle_dir):
    return QAGen.load(oracle_dir / "model")


def test_batched_equals_alone(oracle_model, oracle_dir):
    gold = json.loads((oracle_dir / "score_golden.json").read_text())
    case = gold["cases"][0]
    targets = [r["target"] for r in case["results"]]
    together = oracle_model.score_ids(case["source_ids"], targets)
    for t, res in zip(targets, together):
        alone = oracle_model.score_ids(case["source_ids"], [t])[0]
        # float32 noise from differently shaped kernels grows with magnitude: 1e-5 plus 1e-5 relative.
        np.testing.assert_allclose(res.positional_scores, alone.positional_scores, atol=1e-5, rtol=1e-5)
        assert res.score == pytest.approx(alone.score, abs=1e-5)


def test_documents_batch_together(oracle_model):
    rng = np.random.default_rng(0)
    sources = [list(rng.integers(4, 320, n)) + [2] for n in (5, 40, 17)]
    targets = [[list(rng.integers(4, 320, m)) + [2] for m in lens] for lens in ([3, 9], [12], [1, 4, 30])]
    batched = rescore(oracle_model.backend, sources, targets, RescoringOptions(rescoring_batch_size=3))
    for s, ts, got in zip(sources, targets, batched):
        want = oracle_model.score_ids(s, ts)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.positional_scores, w.positional_scores, atol=1e-5, rtol=1e-5)


def test_empty_target_lists_cost_nothing(oracle_model):
    out = rescore(oracle_model.backend, [[5, 2], [6, 7, 2]], [[], [[9, 2]]])
    assert out[0] == [] and len(out[1]) == 1


def test_truncation_keeps_eos_last():
    assert truncate_with_eos([5, 6, 7, 8, 2], 3, 2) == ([5, 6, 2], True)
    assert truncate_with_eos([5, 6, 2], 3, 2) == ([5, 6, 2], False)


def test_scorer_batch_size_does_not_change_results(tiny_model_dir):
    scorer = QualsScorer(tiny_model_dir, max_len=20)
    sources = ["the police said john smith was arrested in paris on monday", "mary won the game in london",
               "the storm killed ten people in the city", "the bank opened a new court in berlin"]
    summaries = ["john smith was arrested in paris", "mary lost the match in berlin",
                 "the storm killed two people", "the bank closed in berlin"]
    one = scorer.score(sources, summaries, batch_size=1)
    four = scorer.score(sources, summaries, batch_size=4)
    for a, b in zip(one, four):
        assert [(p.question, p.answer) for p in a.pairs] == [(p.question, p.answer) for p in b.pairs]
        if a.score is None:
            assert b.score is None
        else:
            assert a.score == pytest.approx(b.score, abs=1e-5)
