"""QAGS reference: SQuAD answer F1, source windows, span extraction, and an end-to-end run with
tiny random QG/QA models built on the fly."""
from types import SimpleNamespace

import pytest
import torch

from quals_fast.reference.qags import (
    QAGS, ExtractiveQA, QAOptions, QGOptions, QuestionGenerator, answer_candidates, normalize_answer, token_f1,
    windows)
from quals_fast.training.qagen import TrainQAGenOptions


# --- F1 and normalisation ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  a  cat,  an owl and THE dog. ", "cat owl and dog"),
    ("theatre", "theatre"),                      # articles only as whole words
    ("U.S.", "us"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1():
    assert token_f1("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("in Paris", "Rome") == 0.0
    assert token_f1("", "") == 1.0                # both "no answer": they agree
    assert token_f1("", "Paris") == 0.0
    assert token_f1("the", "Paris") == 0.0        # normalises to nothing = no answer
    assert token_f1("paris paris", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)   # counts, not sets


# --- windows -----------------------------------------------------------------------------------

def test_windows_cover_with_overlap():
    assert windows(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert windows(3, 4, 2) == [(0, 3)]
    assert windows(0, 4, 2) == [(0, 0)]
    assert windows(8, 4, 4) == [(0, 4), (4, 8)]
    for n in range(0, 60):
        ws = windows(n, 7, 5)
        assert ws[0][0] == 0 and ws[-1][1] == n
        assert all(e - s <= 7 for s, e in ws)
        assert all(b[0] < a[1] or a[1] == b[0] for a, b in zip(ws, ws[1:]))   # no gap
    with pytest.raises(ValueError):
        windows(5, 4, 5)


# --- span extraction over windows ----------------------------------------------------------------

def _tiny_tokenizer(path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


class _PointingQA(torch.nn.Module):
    """A fake span model: start and end logits peak on one token id, the null span scores 0."""

    def __init__(self, target_id):
        super().__init__()
        self.target_id = target_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hit = (input_ids == self.target_id) & (token_type_ids == 1)
        logits = torch.where(hit, 5.0, -5.0)
        logits[:, 0] = 0.0
        return SimpleNamespace(start_logits=logits, end_logits=logits)


def test_span_found_in_a_later_window_and_no_answer(tiny_model_dir):
    tok = _tiny_tokenizer(tiny_model_dir)
    target = tok.convert_tokens_to_ids("paris")
    qa = ExtractiveQA(None, model=_PointingQA(target), tokenizer=tok,
                      options=QAOptions(max_seq_len=12, doc_stride=3, batch_size=3))
    context = "the man said the team won the game in Paris on monday and the club lost"
    no_paris = "the man said the team won the game in london on monday"
    assert qa.answer(["where was it ?", "where ?"], [context, no_paris]) == ["Paris", ""]


# --- end to end ----------------------------------------------------------------------------------

def test_answer_candidates(nlp):
    doc = nlp("John Smith met the new minister in Paris on Monday, and the minister said two things.")
    cands = answer_candidates(doc, max_answers=10)
    assert "John Smith" in cands and "Paris" in cands
    assert len({c.lower() for c in cands}) == len(cands)
    assert len(answer_candidates(doc, max_answers=2)) == 2


@pytest.fixture(scope="module")
def tiny_qa_dir(tiny_model_dir, tmp_path_factory):
    from quals_fast.bench_cli import build_random_qa

    return build_random_qa(tmp_path_factory.mktemp("tiny_qa"), _tiny_tokenizer(tiny_model_dir))


def test_qags_end_to_end(nlp, tiny_model_dir, tiny_qa_dir, capsys):
    qags = QAGS(tiny_model_dir, tiny_qa_dir, nlp=nlp)
    qags.qg.options.num_beams = 4
    qags.qg.options.max_question_len = 8
    qags.qa.options.max_seq_len = 24
    qags.qa.options.doc_stride = 4
    sources = ["The police said John Smith was arrested in Paris on Monday. The court opened the case.",
               "A fire in London killed three people on Tuesday, the minister said."]
    summaries = ["John Smith was arrested in Paris.", "A storm in Berlin killed ten people."]
    results = qags.score(sources, summaries)
    assert len(results) == 2
    for res, summary, source in zip(results, summaries, sources):
        assert 1 <= len(res.questions) <= 10
        for q in res.questions:
            assert q.answer_candidate in summary
            assert q.summary_answer in summary and q.source_answer in source
            assert 0.0 <= q.f1 <= 1.0
        assert res.score is None or 0.0 <= res.score <= 1.0
    assert set(qags.timings) >= {"answers", "question_generation", "qa_summary", "qa_source"}
    # The progress bars (one per model stage, on stderr) change nothing in the results.
    assert [r.score for r in qags.score(sources, summaries, progress=True)] == [r.score for r in results]
    err = capsys.readouterr().err
    assert all(name in err for name in ("QAGS questions", "QAGS QA on summaries", "QAGS QA on sources"))
    # Without the filter every question counts.
    qags.filter_unanswerable = False
    assert all(r.score is not None for r in qags.score(sources, summaries))


# --- training recipes (QAGen's loop with QG / QA examples) ----------------------------------------

@pytest.fixture(scope="module")
def tiny_squad(tmp_path_factory, data_dir):
    """The three SQuAD files cut to two paragraphs each, so a recipe run takes seconds."""
    import json

    from quals_fast.training.qagen_data import TRAIN_FILES, VALID_FILE

    out = tmp_path_factory.mktemp("squad")
    for name in (*TRAIN_FILES, VALID_FILE):
        data = json.loads((data_dir / "squad" / name).read_text())
        article = dict(data["data"][0], paragraphs=data["data"][0]["paragraphs"][:2])
        (out / name).write_text(json.dumps({"data": [article]}))
    return out


def _minilm():
    from quals_fast.training import warmstart

    try:
        return warmstart.default_minilm_dir()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("task", ["qg", "qa"])
def test_recipe_trains_and_loads_into_qags(task, tiny_squad, tmp_path):
    from quals_fast.cli import build_parser
    from quals_fast.training import qa, qg

    _minilm()
    args = build_parser().parse_args([
        "train-" + task, "--output-dir", str(tmp_path / task), "--data-dir", str(tiny_squad), "--steps", "2",
        "--batch-size", "4", "--warmup-steps", "0", "--val-examples", "4", "--threads", "1", "--decoder-layers", "1",
        "--max-source-len", "128", "--no-progress"])
    assert args.func.__module__ == qg.__name__     # both recipes share the one CLI builder
    torch.set_num_threads(1)
    options = TrainQAGenOptions(**{k: v for k, v in vars(args).items() if k not in ("command", "func")})
    summary = (qg.train_qg if task == "qg" else qa.train_qa)(options)
    best = tmp_path / task / "best"
    assert summary["step"] == 2 and best.is_dir()
    if task == "qg":
        gen = QuestionGenerator(best, options=QGOptions(num_beams=2, max_question_len=6))
        assert isinstance(gen.generate(["Paris"], ["The man lives in Paris."])[0], str)
        assert gen.sep_id != gen.tok.unk_token_id
    else:
        model = ExtractiveQA(best)
        answer = model.answer(["Where does he live?"], ["The man lives in Paris."])[0]
        assert answer in "The man lives in Paris."
    # The swapped names are restored: QAGen's own recipe is untouched afterwards.
    from quals_fast.training import qagen, qagen_data, warmstart

    assert qagen.qagen_loss.__module__ == qagen.__name__
    assert qagen_data.build_paragraphs.__module__ == qagen_data.__name__
    assert warmstart.build_warmstart_model.__module__ == warmstart.__name__


def test_eval_qags_models_on_fixtures(tiny_squad, tiny_model_dir, tiny_qa_dir):
    from quals_fast.training.qags_eval import evaluate_qags_models

    out = evaluate_qags_models(tiny_model_dir, tiny_qa_dir, tiny_squad, paragraphs=1)
    assert out["paragraphs"] == 1
    assert out["qg"]["answers"] >= 1 and 0.0 < out["qg"]["distinct_question_share"] <= 1.0
    assert out["qa"]["questions"] >= out["qg"]["answers"]
    assert 0.0 <= out["qa"]["exact_match"] <= out["qa"]["f1"] <= 100.0
    with pytest.raises(ValueError, match="give a question generator"):
        evaluate_qags_models(None, None, tiny_squad)
