"""Held-out QAGen evaluation: BLEU plumbing and a run on the fixture model."""
import pytest

from quals_fast.training.qagen_eval import _bleu, evaluate_qagen, repeats


def test_bleu_with_uneven_reference_counts():
    pytest.importorskip("sacrebleu")
    assert _bleu(["what is the name of the dog ?"], [["What is the name of the dog?", "other"]]) > 99
    assert _bleu(["a b c d"], [["w x y z"]]) < 1


def test_evaluate_runs_on_fixture(tiny_model_dir, data_dir):
    pytest.importorskip("sacrebleu")
    out = evaluate_qagen(tiny_model_dir, data_dir / "squad", paragraphs=1, max_source_tokens=64, progress=False)
    assert out["paragraphs"] == 1 and out["hypotheses"] == 60
    assert 0.0 <= out["answer_span_share"] <= out["split_share"] <= 1.0
    assert 0.0 <= out["question_repeat_share"] <= 1.0 and 0.0 <= out["gold_question_repeat_share"] <= 1.0


@pytest.mark.parametrize("text, expected", [
    ("what is the oldest known known known as?", True),         # a word twice in a row
    ("what was the score of the second half of the second half?", True),  # a word pair twice
    ("Known, known?", True),                                    # case and punctuation do not hide it
    ("what is the name of the dog in the film?", False),        # "the" thrice, never as a pair
    ("", False),
])
def test_repeats(text, expected):
    assert repeats(text) is expected
