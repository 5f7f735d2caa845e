"""End-to-end QualsScorer on the tiny fixture model, and every kind of bad input."""
import json

import numpy as np
import pytest

from quals_fast import QAGen, QualsScorer
from quals_fast.aggregation import REFERENCE_NO_PAIR_SCORE
from quals_fast.checkpoint import ModelFolderError

SOURCES = ["the police said john smith was arrested in paris on monday", "mary won the game in london",
           "the storm killed ten people in the city"]
SUMMARIES = ["john smith was arrested in paris", "mary lost the match in berlin", "the storm killed two people"]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return QualsScorer(tiny_model_dir, max_len=20)


def test_scores_and_pairs_are_consistent(scorer):
    results = scorer.score(SOURCES, SUMMARIES)
    assert len(results) == 3
    scored = [r for r in results if r.pairs]
    assert scored, "the fixture should keep at least one pair somewhere"
    for r in scored:
        assert r.score == pytest.approx(np.mean([p.source_score - p.summary_score for p in r.pairs]))
        for p in r.pairs:
            assert len(p.tokens) == len(p.token_strings) == len(p.summary_token_scores) == len(p.source_token_scores)
            assert p.source_score == pytest.approx(np.mean(p.source_token_scores), abs=1e-6)
            assert p.summary_score == pytest.approx(sum(p.summary_token_scores) / len(p.tokens), abs=1e-4)
        json.dumps(r.to_dict())  # results are plain data


def test_kept_pairs_follow_the_filter(scorer):
    for r, summary in zip(scorer.score(SOURCES, SUMMARIES), SUMMARIES):
        for p in r.pairs:
            assert p.answer.lower() in summary.lower()


def test_pair_source_scores_match_score_ids(scorer):
    r = next(r for r in scorer.score(SOURCES, SUMMARIES) if r.pairs)
    i = [x for x in scorer.score(SOURCES, SUMMARIES)].index(r)
    src_ids, _ = scorer.qagen.encode_text(SOURCES[i], 1024)
    alone = scorer.qagen.score_ids(src_ids, [r.pairs[0].tokens])[0]
    assert alone.score == pytest.approx(r.pairs[0].source_score, abs=1e-5)


def test_no_pair_gives_none_with_reason_or_sentinel(scorer, monkeypatch):
    import quals_fast.scorer as scorer_module

    monkeypatch.setattr(scorer_module, "select_qa_pairs", lambda *a, **k: [])
    res = scorer.score(SOURCES[:1], SUMMARIES[:1])[0]
    assert res.score is None and res.pairs == [] and "verbatim" in res.reason
    ref = QualsScorer(qagen=scorer.qagen, max_len=20, no_pair_score=REFERENCE_NO_PAIR_SCORE)
    assert ref.score(SOURCES[:1], SUMMARIES[:1])[0].score == REFERENCE_NO_PAIR_SCORE


def test_long_source_is_truncated_and_reported(scorer):
    long_source = " ".join(["the police said john smith was arrested"] * 40)
    res = scorer.score([long_source], [SUMMARIES[0]])[0]
    assert res.source_truncated and res.source_tokens == 128  # the fixture's positions
    short = scorer.score([SOURCES[0]], [SUMMARIES[0]])[0]
    assert not short.source_truncated


@pytest.mark.parametrize("sources, summaries, exc, match", [
    (["a"], ["b", "c"], ValueError, "1 sources but 2 summaries"),
    (["  "], ["the man"], ValueError, "source is empty"),
    (["the man"], [""], ValueError, "summary is empty"),
    ([3], ["the man"], ValueError, "source must be a string"),
    ("the man", "the man", TypeError, "not a single string"),
])
def test_bad_inputs_raise_clearly(scorer, sources, summaries, exc, match):
    with pytest.raises(exc, match=match):
        scorer.score(sources, summaries)


def test_bad_inputs_reported_in_place(scorer):
    res = scorer.score([SOURCES[0], "", SOURCES[1]], [SUMMARIES[0], "x", None], on_error="report")
    assert res[0].error is None and "empty" in res[1].error and "string" in res[2].error


def test_bad_options_raise(tiny_model_dir, scorer):
    with pytest.raises(TypeError, match="unknown option"):
        QualsScorer(qagen=scorer.qagen, beams=3)
    with pytest.raises(ValueError, match="num_groups"):
        QualsScorer(qagen=scorer.qagen, num_beams=10, num_groups=3)
    with pytest.raises(ValueError, match="batch_size"):
        scorer.score(SOURCES, SUMMARIES, batch_size=0)


def test_model_folder_errors_name_the_problem(tmp_path, tiny_model_dir):
    with pytest.raises(ModelFolderError, match="does not exist"):
        QAGen.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="config.json"):
        QAGen.load(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelFolderError, match="no weights"):
        QAGen.load(tmp_path / "noweights")


def test_separator_the_tokenizer_cannot_produce(tiny_model_dir):
    with pytest.raises(ValueError, match="cannot come out"):
        QAGen.load(tiny_model_dir, separator=" strutConnector")


def test_bos_before_inputs_needs_a_bos_id(tiny_model_dir, tmp_path):
    import shutil

    from quals_fast.backends.onnx_backend import spec_from_config

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert spec_from_config({**cfg, "qagen_source_bos": True}).source_bos
    assert not spec_from_config(cfg).source_bos
    cfg.update(qagen_source_bos=True, bos_token_id=None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no bos_token_id"):
        QAGen.load(tmp_path / "m")


def test_text_api_needs_a_tokenizer(oracle_dir):
    m = QAGen.load(oracle_dir / "model")
    with pytest.raises(ValueError, match="no tokenizer"):
        m.encode_text("hello", 10)
    with pytest.raises(ValueError, match="needs a model folder with a tokenizer"):
        QualsScorer(qagen=m)


def test_id_inputs_are_validated(oracle_dir):
    m = QAGen.load(oracle_dir / "model")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate_ids([[5, 400, 2]], num_beams=2, num_groups=2, max_len=10)
    with pytest.raises(TypeError, match="string"):
        m.generate_ids(["abc"], num_beams=2, num_groups=2)
    with pytest.raises(ValueError, match="non-empty"):
        m.score_ids([], [[5, 2]])
    with pytest.raises(ValueError, match="exceed"):
        m.generate_ids([[5] * 300 + [2]], num_beams=2, num_groups=2)
