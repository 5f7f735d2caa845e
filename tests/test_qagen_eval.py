"""Held-out QAGen evaluation: BLEU plumbing and a run on the fixture model."""
import pytest

from quals_fast.training.qagen_eval import _bleu, evaluate_qagen


def test_bleu_with_uneven_reference_counts():
    pytest.importorskip("sacrebleu")
    assert _bleu(["what is the name of the dog ?"], [["What is the name of the dog?", "other"]]) > 99
    assert _bleu(["a b c d"], [["w x y z"]]) < 1


def test_evaluate_runs_on_fixture(tiny_model_dir, data_dir):
    pytest.importorskip("sacrebleu")
    out = evaluate_qagen(tiny_model_dir, data_dir / "squad", paragraphs=1, max_source_tokens=64, progress=False)
    assert out["paragraphs"] == 1 and out["hypotheses"] == 60
    assert 0.0 <= out["answer_span_share"] <= out["split_share"] <= 1.0
