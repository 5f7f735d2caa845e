"""Human-correlation evaluation: label aggregation, correlation maths, a resumable run."""
import json
import math

import numpy as np
import pytest

from quals_fast.evaluation import evaluate, human_score, load_qags, pearson, spearman


def votes(*answers):
    return {"sentence": "s", "responses": [{"worker_id": i, "response": a} for i, a in enumerate(answers)]}


def test_human_score_is_mean_of_majorities():
    assert human_score([votes("yes", "yes", "no"), votes("no", "no", "yes")]) == 0.5
    assert human_score([votes("yes", "no", "no")]) == 0.0


def test_spearman_uses_average_ranks_for_ties():
    x = [1.0, 2.0, 2.0, 3.0]
    y = [10.0, 20.0, 30.0, 40.0]
    # ranks of x: 0, 1.5, 1.5, 3 -> Pearson of those with 0, 1, 2, 3
    want = np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1]
    assert spearman(x, y) == pytest.approx(want)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_load_qags_joins_sentences(data_dir):
    items = load_qags(data_dir / "qags" / "mturk_cnndm.jsonl")
    assert len(items) == 235
    article, summary, human = items[0]
    assert article and summary and 0.0 <= human <= 1.0


def test_evaluate_writes_and_resumes(tmp_path, data_dir, tiny_model_dir):
    from quals_fast import QualsScorer

    scorer = QualsScorer(tiny_model_dir, max_len=12, max_source_tokens=64)
    out = tmp_path / "eval"
    table = evaluate(scorer, data_dir / "qags", out, limit=2, progress=False)
    assert set(table) == {"QAGS-CNNDM", "QAGS-XSUM"} and table["QAGS-CNNDM"]["items"] == 2
    lines = (out / "mturk_cnndm.scores.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "human" in json.loads(lines[0])
    again = evaluate(scorer, data_dir / "qags", out, limit=2, progress=False)
    assert len((out / "mturk_cnndm.scores.jsonl").read_text().splitlines()) == 2
    assert again["QAGS-XSUM"]["items"] == 2
