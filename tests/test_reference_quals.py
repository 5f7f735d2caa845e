"""The straightforward QUALS (HF decoder + KV cache, Python bookkeeping, per-pair re-encoding)
agrees with the engine: same kept pairs, same scores."""
import pytest

from quals_fast import QualsScorer
from quals_fast.reference.quals_reference import quals_reference, select_pairs

SOURCES = [
    "the police said the man was arrested in paris on monday . the court opened the case .",
    "john smith won the match for the club . the coach said the team lost two games in ten years .",
    "a fire in london killed three people on tuesday , the minister said .",
]
SUMMARIES = [
    "the police arrested a man in paris on monday .",
    "john smith won the match for the club .",
    "a storm in berlin killed ten people , the president said .",
]
# Two beams per group, and one beam per group as QUALS runs it (60 in 60).
SETTINGS = [dict(num_beams=12, num_groups=6, min_len=2, max_len=16),
            dict(num_beams=16, num_groups=16, min_len=4, max_len=12)]


@pytest.fixture(scope="module", params=SETTINGS, ids=["2-per-group", "1-per-group"])
def both(tiny_model_dir, request):
    engine = QualsScorer(str(tiny_model_dir), **request.param).score(SOURCES, SUMMARIES, batch_size=2)
    reference = quals_reference(tiny_model_dir, SOURCES, SUMMARIES, batch_size=2, **request.param)
    return engine, reference


def test_same_pairs_and_scores_as_engine(both):
    engine, reference = both
    assert any(r.pairs for r in reference), "the fixture should keep some pairs"
    for e, r in zip(engine, reference):
        assert [(p.question, p.answer, p.tokens) for p in e.pairs] == [(p.question, p.answer, p.tokens) for p in r.pairs]
        for pe, pr in zip(e.pairs, r.pairs):
            assert pr.summary_score == pytest.approx(pe.summary_score, abs=1e-4)
            assert pr.source_score == pytest.approx(pe.source_score, abs=1e-4)
        if e.score is None:
            assert r.score is None
        else:
            assert r.score == pytest.approx(e.score, abs=1e-4)


def test_a_model_that_asks_for_bos_gets_it_in_both(tiny_model_dir, tmp_path):
    """`qagen_source_bos` in the config puts bos before every encoder input, the summary QAGen
    reads and the source it is rescored against, in the engine and the reference alike."""
    import json
    import shutil

    model = tmp_path / "bos"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["qagen_source_bos"] = True
    (model / "config.json").write_text(json.dumps(cfg))
    scorer = QualsScorer(str(model), **SETTINGS[0])
    ids, _ = scorer.qagen.encode_text(SUMMARIES[0], 1024)
    plain, _ = QualsScorer(str(tiny_model_dir)).qagen.encode_text(SUMMARIES[0], 1024)
    assert ids == [cfg["bos_token_id"]] + plain
    engine = scorer.score(SOURCES, SUMMARIES, batch_size=2)
    reference = quals_reference(model, SOURCES, SUMMARIES, batch_size=2, **SETTINGS[0])
    assert any(r.pairs for r in reference)
    for e, r in zip(engine, reference):
        assert [p.tokens for p in e.pairs] == [p.tokens for p in r.pairs]
        for pe, pr in zip(e.pairs, r.pairs):
            assert pr.source_score == pytest.approx(pe.source_score, abs=1e-4)


def test_selection_round_robin_and_duplicates():
    sep = " strutConnector"
    cands = [("q1" + sep + "Paris", 5.0), ("q2" + sep + "paris", 4.0), ("q3" + sep + "Monday", 3.0),
             ("q1" + sep + "PARIS", 2.0), ("q4" + sep + "Rome", 9.0), ("bad", 8.0)]
    kept = select_pairs(cands, "In Paris on Monday", sep, max_pairs=2)
    # Round 1 takes the best of each answer; the limit is only checked between rounds.
    assert [i for i, _, _ in kept] == [0, 2]
    kept = select_pairs(cands, "In Paris on Monday", sep, max_pairs=10)
    # q1/PARIS repeats (paris, q1) and uses its turn without being kept.
    assert [i for i, _, _ in kept] == [0, 2, 1]
