"""The embedded default QAGen model: it loads with no argument and scores text out of the box."""
import json
from pathlib import Path

import pytest

from quals_fast import QualsScorer
from quals_fast.checkpoint import default_model_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pairs.jsonl"

pytestmark = pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(),
                                reason="the default model is not embedded in this checkout")


@pytest.fixture(scope="module")
def examples():
    rows = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def scores(examples):
    scorer = QualsScorer()
    rows = list(examples.values())
    results = scorer.score([r["source"] for r in rows], [r["summary"] for r in rows])
    return {r["id"]: res for r, res in zip(rows, results)}


def test_default_model_loads_and_scores(scores):
    for res in scores.values():
        assert res.error is None
        assert res.score is not None or res.reason


def test_default_model_separator_and_size():
    config = json.loads((default_model_dir() / "config.json").read_text())
    assert config["qagen_separator"] == " [qsep]"
    size = sum(p.stat().st_size for p in default_model_dir().iterdir())
    assert size <= 100 * 2**20


SWAPS = ("boxing", "football", "takeover", "summit")


def test_swapped_roles_score_lower(scores):
    """Each topic has a faithful summary and one that swaps who did what (examples/pairs.jsonl).
    "Clearly lower": every swapped summary below its faithful one, by 0.25 nats/token on average."""
    gaps = {}
    for topic in SWAPS:
        faithful, swapped = scores[topic + "-faithful"].score, scores[topic + "-swapped"].score
        assert faithful is not None and swapped is not None, topic
        gaps[topic] = faithful - swapped
    assert all(g > 0 for g in gaps.values()), gaps
    assert sum(gaps.values()) / len(gaps) >= 0.25, gaps


def test_answer_filter_searches_the_summary_as_decoded():
    """WordPiece decoding is lossy ("17.5" -> "17. 5"); the filter compares generated answers with
    the summary's own round trip, so an answer copied from the summary still matches it."""
    from quals_fast.qagen import QAGen
    from quals_fast.selection import select_qa_pairs

    q = QAGen.load()
    summary = "The Mexico-United States deal was worth $17.5 million, officials said."
    text = q.answer_search_text(summary)
    assert text != summary
    answer_ids = q.tokenizer(" what was it worth? [qsep] $17.5 million")["input_ids"][1:-1]
    candidate = q.decode(answer_ids)
    assert candidate.split(q.separator)[1].strip() not in summary.lower()  # the raw text misses it
    kept = select_qa_pairs([{"text": candidate, "score": -1.0, "unnormalized_score": -1.0}], text, sep=q.separator, max_pairs=10)
    assert [p.answer.strip() for p in kept] == ["$ 17. 5 million"]


def test_lossless_tokenizers_search_the_summary_itself(tiny_model_dir):
    from quals_fast.qagen import QAGen

    q = QAGen.load(tiny_model_dir)
    assert q.answer_search_text("the cat sat on the mat .") == "the cat sat on the mat ."


def test_long_source_is_truncated_without_a_tokenizer_warning(capfd):
    """A source past the model's 512 positions is cut (and flagged) here, so the tokenizer's
    "will result in indexing errors" warning would only mislead."""
    from quals_fast.qagen import QAGen

    q = QAGen.load()
    ids, truncated = q.encode_text("The council met again on Monday. " * 200, 10_000)
    assert truncated and len(ids) == q.spec.max_source_positions and ids[-1] == q.spec.eos_id
    assert "indexing errors" not in capfd.readouterr().err
