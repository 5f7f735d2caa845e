"""QA-pair selection and the C++ lower-casing it rests on.

The law is the original QUALS code, as recorded in shared/oracle/select_golden.json; the
hand-written cases pin each rule, and the property tests compare the C++ against Python itself
(``str.lower``) and against the plain-Python selection of the QUALS reference.
"""
import dataclasses
import json
import math
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quals_fast import selection
from quals_fast._native import BuildError, core
from quals_fast.reference.quals_reference import filter_pairs, select_pairs
from quals_fast.selection import QAPair, SelectionOptions, select_qa_pairs

SEP = " strutConnector"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cand(question, answer, uns, score=None, sep=SEP):
    return {"text": question + sep + answer, "score": uns / 10 if score is None else score, "unnormalized_score": uns}


def pairs(kept):
    return [(p.question, p.answer) for p in kept]


def reference_filter(texts, summary, sep=SEP):
    return filter_pairs(texts, summary, sep)


def reference_select(texts, scores, summary, sep=SEP, max_pairs=10, strict_cap=False):
    return select_pairs(list(zip(texts, scores)), summary, sep, max_pairs, strict_cap)


# --- lower-casing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("İstanbul", "i\u0307stanbul"),           # full mapping: two code points
    ("ΣΟΦΟΣ", "σοφος"),                       # final sigma at the end only
    ("Σ", "σ"),                               # nothing cased before it
    ("AΣ", "aς"),
    ("AΣB", "aσb"),                           # a cased letter follows
    ("AΣ1", "aς1"),                           # an uncased one follows
    ("A'Σ", "a'ς"),                           # apostrophe is case-ignorable: looks through it
    ("AΣ'B", "aσ'b"),
    ("1Σ", "1σ"),
    ("\u0345Σ", "\u0345σ"),                   # cased but case-ignorable: skipped, then the start
    ("A\u0345Σ", "a\u0345ς"),
    ("ΣΣ", "σς"),                             # the first is followed by a cased Σ
    ("ß", "ß"),                               # no mapping
    ("STRAẞE", "straße"),
    ("ǅ", "ǆ"),                               # titlecase digraph
    ("ΩKÅ", "ωkå"),                           # OHM, KELVIN, ANGSTROM signs
])
def test_lower_examples(text, expected):
    assert text.lower() == expected  # the table above is Python's own behaviour
    assert core.lower(text) == expected


def test_lower_every_code_point_in_every_sigma_context():
    # Each code point alone, before a capital sigma, and between a sigma and a cased letter:
    # together with U+0031 as a barrier (neither cased nor case-ignorable), this exercises the
    # mapping and both case properties of every code point, all in one call each way.
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    text = "".join(chars) + "1" + "1".join(c + "Σ" for c in chars) + "1" + "1".join("AΣ" + c + "B" for c in chars)
    assert core.lower(text) == text.lower()


def test_unicode_version_matches_interpreter():
    assert core.unicode_version == unicodedata.unidata_version


def test_stale_unicode_tables_are_refused(monkeypatch):
    monkeypatch.setattr(core, "unicode_version", "1.0.0")
    with pytest.raises(BuildError, match="build_ext --inplace"):
        selection._check_unicode_version()


@FAST
@given(st.text())
def test_lower_matches_python_on_any_text(text):
    assert core.lower(text) == text.lower()


# Weighted towards what the Final_Sigma rule and the full mappings look at.
TRICKY = (["Σ"] * 6 + ["A"] * 3 + ["σ", "ς", "a", "1", " ", "'", ".", ":", "\u0301", "\u0345", "\u00ad",
          "\u200d", "\u02b0", "İ", "ß", "ẞ", "ᾼ", "ǅ", "Ω", "K", "東", "😀", "\U000e0001", "\u0307"])


@FAST
@given(st.text(alphabet=st.sampled_from(TRICKY), max_size=30))
def test_lower_matches_python_on_sigma_heavy_text(text):
    assert core.lower(text) == text.lower()


# --- the verbatim-answer filter ----------------------------------------------------------------

SUMMARY = "The vote in Paris  passed. Ο ΣΟΦΟΣ. İstanbul, STRAẞE"


@pytest.mark.parametrize("text, kept", [
    ("Where? strutConnector Paris", True),
    ("Where? strutConnector paris", True),                 # case-folded on both sides
    ("Where?strutConnector Paris", False),                 # separator without its leading space
    ("Where? strutconnector Paris", False),                # separator is case-sensitive
    ("Where? Paris", False),                               # no separator
    ("Where? strutConnector Paris strutConnector vote", False),  # three parts
    ("Where? strutConnector", True),                       # empty answer is in every summary
    (" strutConnector Paris", True),                       # empty question is fine
    ("Where? strutConnector Paris  ", True),               # trailing spaces kept: "Paris  passed"
    ("Where? strutConnector vote   ", False),
    ("What? strutConnector The vote", False),              # at the very start: no space before it
    ("What? strutConnectorThe vote", True),
    ("Who? strutConnector ΣΟΦΟΣ", True),                   # final sigma on both sides
    ("Who? strutConnector σοφος", True),
    ("Who? strutConnector ΣΟΦ", True),
    ("Where? strutConnector İSTANBUL", True),              # İ -> i + U+0307 on both sides
    ("Where? strutConnector istanbul", False),
    ("What? strutConnector straße", True),                 # ẞ lower-cases to ß
    ("What? strutConnector STRASSE", False),               # lower() is not casefold()
])
def test_filter_rules(text, kept):
    expected = [(0,) + tuple(text.split(SEP))] if kept else []
    assert core.filter_verbatim([text], SUMMARY, SEP) == expected
    assert reference_filter([text], SUMMARY) == expected


def test_final_sigma_is_decided_in_each_string_separately():
    # Upper-case " ΣΟΦΟΣ" is inside "ΣΟΦΟΣΑ", but lower-cased the answer ends in ς and the
    # summary has σ there.
    assert core.filter_verbatim(["Q? strutConnector ΣΟΦΟΣ"], "x ΣΟΦΟΣΑ") == []
    assert core.filter_verbatim(["Q? strutConnector ΣΟΦΟΣ"], "x ΣΟΦΟΣ, y") == [(0, "Q?", " ΣΟΦΟΣ")]


def test_split_follows_python_on_overlapping_separators():
    assert "xaaay".split("aa") == ["x", "ay"]
    assert core.filter_verbatim(["xaaay", "xaaaay"], "say", "aa") == [(0, "x", "ay")]


# --- the round-robin selection -----------------------------------------------------------------

SUMMARY2 = "Then Alice met Bob in Paris."


def test_sorted_by_unnormalized_score_and_grouped_by_first_appearance():
    cands = [cand("Who met?", " Bob", -5.0), cand("Who?", " Alice", -1.0), cand("Where?", " Paris", -3.0),
             cand("Whom?", " bob", -2.0)]
    kept = select_qa_pairs(cands, SUMMARY2)
    # Round 1: Alice (-1), bob (-2; the group of " Bob"), Paris (-3); round 2: Bob (-5).
    assert pairs(kept) == [("Who?", " Alice"), ("Whom?", " bob"), ("Where?", " Paris"), ("Who met?", " Bob")]
    assert [p.index for p in kept] == [1, 3, 2, 0]
    assert kept[0] == QAPair(question="Who?", answer=" Alice", score=-0.1, unnormalized_score=-1.0, index=1)


def test_ties_keep_input_order():
    cands = [cand("Q1", " Bob", -2.0), cand("Q2", " Alice", -2.0), cand("Q3", " Paris", -2.0)]
    assert [p.index for p in select_qa_pairs(cands, SUMMARY2)] == [0, 1, 2]


def test_duplicate_pair_is_skipped_and_uses_up_its_turn():
    cands = [cand("Who?", " Alice", -1.0), cand("WHO?", " ALICE", -2.0), cand("Whom?", " Alice", -3.0),
             cand("Where?", " Paris", -1.5), cand("Where exactly?", " Paris", -4.0)]
    # Round 2: Alice's turn goes to the duplicate "WHO?"; Paris keeps its second.
    # Round 3: "Whom?" for Alice.
    assert pairs(select_qa_pairs(cands, SUMMARY2)) == [
        ("Who?", " Alice"), ("Where?", " Paris"), ("Where exactly?", " Paris"), ("Whom?", " Alice")]


def test_round_that_adds_nothing_ends_the_selection():
    cands = [cand("Who?", " Alice", -1.0), cand("who?", " alice", -2.0), cand("Whom?", " Alice", -3.0)]
    # Round 2 only meets the duplicate, so "Whom?" is never reached.
    assert pairs(select_qa_pairs(cands, SUMMARY2)) == [("Who?", " Alice")]


def test_limit_checked_before_each_round_overshoots():
    cands = [cand("Q%d" % k, a, -float(k)) for k, a in enumerate([" Alice", " Bob", " Paris"] * 2)]
    assert len(select_qa_pairs(cands, SUMMARY2, max_pairs=1)) == 3
    assert len(select_qa_pairs(cands, SUMMARY2, max_pairs=4)) == 6
    assert len(select_qa_pairs(cands, SUMMARY2, max_pairs=3)) == 3


def test_strict_cap_stops_exactly():
    cands = [cand("Q%d" % k, a, -float(k)) for k, a in enumerate([" Alice", " Bob", " Paris"] * 2)]
    strict = select_qa_pairs(cands, SUMMARY2, max_pairs=4, strict_cap=True)
    assert pairs(strict) == pairs(select_qa_pairs(cands, SUMMARY2, max_pairs=4))[:4]


def test_no_candidates_and_no_valid_candidates():
    assert select_qa_pairs([], SUMMARY2) == []
    assert select_qa_pairs([cand("Who?", " Carol", -1.0)], SUMMARY2) == []


def test_custom_separator_and_options_as_keywords():
    cands = [cand("Who?", " Alice", -1.0, sep=" <a>"), cand("Who?", " Bob", -2.0)]
    options = SelectionOptions(max_pairs=3, separator=" <a>")
    assert pairs(select_qa_pairs(cands, SUMMARY2, **dataclasses.asdict(options))) == [("Who?", " Alice")]
    assert pairs(select_qa_pairs(cands, SUMMARY2, sep=" <a>")) == [("Who?", " Alice")]


def test_candidates_as_objects_and_numpy_like_scores():
    class Score:
        def __float__(self):
            return -1.0

    obj = SimpleNamespace(text="Who? strutConnector Bob", score=Score(), unnormalized_score=-3)
    (kept,) = select_qa_pairs(iter([obj]), SUMMARY2)
    assert (kept.score, kept.unnormalized_score) == (-1.0, -3.0)


def test_nan_normalized_score_is_carried_nan_unnormalized_refused():
    (kept,) = select_qa_pairs([cand("Who?", " Bob", -1.0, score=float("nan"))], SUMMARY2)
    assert math.isnan(kept.score)
    with pytest.raises(ValueError, match="NaN"):
        select_qa_pairs([cand("Who?", " Bob", float("nan"))], SUMMARY2)


@pytest.mark.parametrize("call, error", [
    (lambda: select_qa_pairs([cand("Q", " Bob", -1.0)], b"Bob"), TypeError),
    (lambda: select_qa_pairs([{"text": 3, "score": 0.0, "unnormalized_score": 0.0}], SUMMARY2), TypeError),
    (lambda: select_qa_pairs([{"text": "Q strutConnector Bob", "score": 0.0}], SUMMARY2), TypeError),
    (lambda: select_qa_pairs([SimpleNamespace(text="x", score=0.0)], SUMMARY2), TypeError),
    (lambda: select_qa_pairs([cand("Q", " Bob", -1.0, score="0.5")], SUMMARY2), TypeError),
    (lambda: select_qa_pairs([cand("Q", " Bob", True)], SUMMARY2), TypeError),
    (lambda: select_qa_pairs(cand("Q", " Bob", -1.0), SUMMARY2), TypeError),
    (lambda: select_qa_pairs([cand("Q", " Bob\ud800", -1.0)], SUMMARY2), ValueError),
    (lambda: select_qa_pairs([], SUMMARY2, max_pairs=0), ValueError),
    (lambda: select_qa_pairs([], SUMMARY2, max_pairs=2.0), TypeError),
    (lambda: select_qa_pairs([], SUMMARY2, max_pairs=True), TypeError),
    (lambda: select_qa_pairs([], SUMMARY2, sep=""), ValueError),
    (lambda: select_qa_pairs([], SUMMARY2, strict_cap=1), TypeError),
    (lambda: select_qa_pairs([], SUMMARY2, sep=" <a>", separator=" <b>"), TypeError),
])
def test_bad_input_is_refused_clearly(call, error):
    with pytest.raises(error):
        call()


def test_pairs_are_frozen():
    (kept,) = select_qa_pairs([cand("Who?", " Bob", -1.0)], SUMMARY2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        kept.answer = " Alice"


# --- the golden vectors of the original code ---------------------------------------------------

@pytest.fixture(scope="module")
def select_golden():
    path = Path(__file__).resolve().parents[1].parent / "shared" / "oracle" / "select_golden.json"
    if not path.is_file():
        pytest.skip("golden vectors not found at %s (they live beside the checkout)" % path)
    return json.loads(path.read_text(encoding="utf-8"))


def test_golden_vectors(select_golden):
    config = select_golden["config"]
    for index, case in enumerate(select_golden["cases"]):
        kept = select_qa_pairs(case["candidates"], case["summary"], max_pairs=config["max_qas"],
                               sep=config["separator"])
        expected = [(k["q"], k["a"], k["ns"], k["uns"]) for k in case["kept"]]
        assert [(p.question, p.answer, p.score, p.unnormalized_score) for p in kept] == expected, "case %d" % index


# --- C++ against the plain restatement ---------------------------------------------------------

QUESTIONS = ["Who?", "who?", "WHO?", "What?", ""]
ANSWERS = ["", " a", " A", " b", " ab", " Σ", " σ", " ς", "a", " ab ", " c", "  a"]
SEPS = [SEP, " strutconnector", SEP + " a" + SEP, ""]


@st.composite
def candidate_lists(draw):
    n = draw(st.integers(0, 14))
    texts = [draw(st.sampled_from(QUESTIONS)) + draw(st.sampled_from(SEPS)) + draw(st.sampled_from(ANSWERS))
             for _ in range(n)]
    scores = [draw(st.sampled_from([0.0, -1.0, -1.0, -2.5, -7.0, float("-inf"), float("inf")])) for _ in range(n)]
    summary = draw(st.text(alphabet=st.sampled_from(["a", "A", "b", " ", "Σ", "c", "x"]), max_size=10))
    return texts, scores, summary


@FAST
@given(candidate_lists(), st.integers(1, 6), st.booleans())
def test_selection_matches_plain_python(data, max_pairs, strict_cap):
    texts, scores, summary = data
    expected = reference_select(texts, scores, summary, max_pairs=max_pairs, strict_cap=strict_cap)
    assert core.select_qa_pairs(texts, scores, summary, SEP, max_pairs, strict_cap) == expected
    assert core.filter_verbatim(texts, summary, SEP) == reference_filter(texts, summary)
