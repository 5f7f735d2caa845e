"""Role-swap evaluation: which entities get exchanged, the dev-b pairs, and a run on the fixture."""
import json
from types import SimpleNamespace as NS

import pytest

from quals_fast.training.swap_eval import _substitute, _swap, build_news_swap_pairs, build_swap_pairs, evaluate_swaps


def _doc(sentence, *ents):
    out = []
    for text, label in ents:
        start = sentence.index(text)
        out.append(NS(text=text, label_=label, start_char=start, end_char=start + len(text)))
    return NS(ents=out)


def test_swap_exchanges_two_same_kind_entities():
    s = "Murphy, chief of ABC, called Goldenson in Paris."
    assert _swap(s, _doc(s, ("Murphy", "PERSON"), ("ABC", "ORG"), ("Goldenson", "PERSON"))) == \
        "Goldenson, chief of ABC, called Murphy in Paris."


@pytest.mark.parametrize("sentence, ents", [
    ("Sicily and Malta fell.", (("Sicily", "GPE"), ("Malta", "GPE"))),              # one list
    ("Los Angeles, Orange, Riverside grew.", (("Los Angeles", "GPE"), ("Riverside", "GPE"))),
    ("Tesla met Tesla Motors staff.", (("Tesla", "PERSON"), ("Tesla Motors", "PERSON"))),  # nested
    ("Tesla met Edison.", (("Tesla", "PERSON"), ("Edison", "ORG"))),               # other kinds
    ("Paris is far from Lyon.", (("Paris", "DATE"), ("Lyon", "DATE"))),             # not swappable kinds
])
def test_swap_skips_what_keeps_the_meaning_or_is_ambiguous(sentence, ents):
    assert _swap(sentence, _doc(sentence, *ents)) == ""


def test_dev_b_pairs_are_verbatim_and_swapped(data_dir, nlp):
    pairs = build_swap_pairs(data_dir / "squad", 4, nlp)
    assert len(pairs) == 4 and len({p["id"] for p in pairs}) == 4
    for p in pairs:
        assert p["faithful"] in p["source"] and p["swapped"] != p["faithful"]
        assert sorted(p["swapped"]) == sorted(p["faithful"])  # the same characters, moved
    assert build_swap_pairs(data_dir / "squad", 4, nlp) == pairs


def test_evaluate_runs_on_fixture(tiny_model_dir, data_dir, monkeypatch):
    from quals_fast import QualsScorer
    from quals_fast.training import swap_eval

    fixed = [{"id": "x", "source": "Ann beat Bob in Rome on Monday.", "faithful": "Ann beat Bob.", "swapped": "Bob beat Ann."}]
    monkeypatch.setattr(swap_eval, "build_swap_pairs", lambda data_dir, n: [dict(p) for p in fixed])
    out = evaluate_swaps(data_dir=data_dir / "squad", n=1, progress=False,
                         scorer=QualsScorer(tiny_model_dir, max_source_tokens=64))
    assert out["pairs"] == 1 and len(out["items"]) == 1
    item = out["items"][0]
    assert set(item) == {"id", "faithful", "swapped", "faithful_score", "swapped_score"}
    if out["scored_pairs"]:
        assert out["mean_gap"] == pytest.approx(item["faithful_score"] - item["swapped_score"])
        assert out["ranked_right"] == float(out["mean_gap"] > 0)


def test_pairs_file_is_scored_as_saved(tiny_model_dir, data_dir, tmp_path, capsys):

    from quals_fast.cli import main

    pairs = [{"id": "x", "source": "Ann beat Bob in Rome on Monday.", "faithful": "Ann beat Bob.", "swapped": "Bob beat Ann.", "extra": 1},
             {"id": "y", "source": "Cid met Dee in Oslo.", "faithful": "Cid met Dee.", "swapped": "Dee met Cid."}]
    f = tmp_path / "pairs.json"
    f.write_text(json.dumps(pairs))
    out = tmp_path / "out.json"
    assert main(["eval-swaps", "--model", str(tiny_model_dir), "--pairs", "1", "--pairs-file", str(f),
                 "--output", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 1 and [i["id"] for i in result["items"]] == ["x"]


@pytest.mark.parametrize("content, message", [
    ('[{"id": "x"}]', "expected a JSON list"),
    ('{"id": "x"}', "expected a JSON list"),
    ('[]', "holds 0 pairs, 1 asked for"),
])
def test_bad_pairs_file_is_refused(tmp_path, content, message):
    from quals_fast.cli import main

    f = tmp_path / "pairs.json"
    f.write_text(content)
    with pytest.raises(SystemExit, match=message):
        main(["eval-swaps", "--pairs", "1", "--pairs-file", str(f)])
    for other in (["--save-pairs", str(tmp_path / "x.json")], ["--news-file", str(f)]):
        with pytest.raises(SystemExit, match="excludes --save-pairs and --news-file"):
            main(["eval-swaps", "--pairs-file", str(f), *other])


def test_news_swaps_exchange_entities_the_article_names():
    s = "Ann beat Bob in Rome, and Cid watched."
    doc = _doc(s, ("Ann", "PERSON"), ("Bob", "PERSON"), ("Cid", "PERSON"))
    assert _swap(s, doc, source="Bob lost to Cid in Rome.") == "Ann beat Cid in Rome, and Bob watched."  # Ann is not in it
    assert _swap(s, doc, source="Nobody here.") == ""


def test_news_pairs_come_from_summaries_in_file_order(tmp_path, nlp):

    rows = [{"id": 7, "source": "Chelsea signed Kenneth Omeruo from Arsenal.", "summary": "It rained all day ."},
            {"id": 8, "source": "Michael Gove was sacked by Theresa May on Monday.",
             "summary": "Michael Gove says he was sacked by Theresa May ."}]
    f = tmp_path / "news.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = build_news_swap_pairs(f, 5, nlp)
    assert [(p["id"], p["swapped"]) for p in pairs] == [("news-8", "Theresa May says he was sacked by Michael Gove .")]
    assert pairs[0]["source"] == rows[1]["source"] and pairs[0]["faithful"] == rows[1]["summary"]
    f.write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(ValueError, match="'source' and 'summary'"):
        build_news_swap_pairs(f, 5, nlp)


def test_news_pairs_are_saved_from_the_cli(tmp_path, monkeypatch):

    from quals_fast.cli import main
    from quals_fast.training import swap_eval

    out = tmp_path / "new" / "pairs.json"  # the folder is made
    with pytest.raises(SystemExit, match="No such file"):
        main(["eval-swaps", "--news-file", str(tmp_path / "missing.jsonl"), "--save-pairs", str(out)])
    fixed = [{"id": "n-1", "source": "Ann beat Bob.", "faithful": "Ann beat Bob .", "swapped": "Bob beat Ann ."}]
    monkeypatch.setattr(swap_eval, "build_news_swap_pairs", lambda path, n, corruption, faithful, article_skip: [dict(p) for p in fixed][:n])
    assert main(["eval-swaps", "--news-file", "any.jsonl", "--pairs", "3", "--save-pairs", str(out)]) == 0
    assert json.loads(out.read_text()) == fixed
    with pytest.raises(SystemExit, match="only with --news-file"):
        main(["eval-swaps", "--faithful", "article", "--save-pairs", str(out)])
    with pytest.raises(SystemExit, match="only with --news-file"):
        main(["eval-swaps", "--article-skip", "1", "--save-pairs", str(out)])


def test_substitute_credits_the_article_s_other_participant():
    source = "Mayweather beat Pacquiao. Mayweather was booed. Pacquiao blamed his shoulder, Arum said."
    src = _doc(source, ("Mayweather", "PERSON"), ("Pacquiao", "PERSON"), ("Arum", "PERSON"))
    src.ents += [NS(text="Mayweather", label_="PERSON", start_char=26, end_char=36)]  # named twice: the most frequent
    s = "Pacquiao said a shoulder injury hampered him."
    assert _substitute(s, _doc(s, ("Pacquiao", "PERSON")), src) == "Mayweather said a shoulder injury hampered him."
    s = "Pacquiao and Mayweather met."  # the most frequent is already in the sentence: the next one
    assert _substitute(s, _doc(s, ("Pacquiao", "PERSON"), ("Mayweather", "PERSON")), src) == "Arum and Mayweather met."
    s = "Ali said a shoulder injury hampered him."  # the article does not name Ali
    assert _substitute(s, _doc(s, ("Ali", "PERSON")), src) == ""
    s = "Pacquiao beat Pacquiao."  # named twice: which one to replace is ambiguous
    assert _substitute(s, _doc(s, ("Pacquiao", "PERSON")), src) == ""


def test_news_substitution_pairs_from_a_file(tmp_path, nlp):
    f = tmp_path / "news.jsonl"
    source = "Michael Gove sacked Theresa May on Monday. Gove said Theresa May had to go. Boris Johnson agreed."
    f.write_text(json.dumps({"id": 3, "source": source, "summary": "Boris Johnson has sacked Theresa May ."}) + "\n")
    pairs = build_news_swap_pairs(f, 5, nlp, corruption="substitute")
    assert [(p["id"], p["swapped"]) for p in pairs] == [("news-3", "Michael Gove has sacked Theresa May .")]
    with pytest.raises(ValueError, match="corruption"):
        build_news_swap_pairs(f, 5, nlp, corruption="negate")


def test_article_sentence_pairs_take_the_first_sentence_that_allows_the_corruption(tmp_path, nlp):
    f = tmp_path / "news.jsonl"
    source = "It rained in Rome on Monday. Michael Gove was sacked by Theresa May. Boris Johnson agreed."
    f.write_text(json.dumps({"id": 4, "source": source, "summary": "It rained ."}) + "\n")
    pairs = build_news_swap_pairs(f, 5, nlp, faithful="article")
    assert [(p["id"], p["faithful"], p["swapped"]) for p in pairs] == [
        ("news-4-sentence1", "Michael Gove was sacked by Theresa May.", "Theresa May was sacked by Michael Gove.")]
    assert pairs[0]["source"] == source
    pairs = build_news_swap_pairs(f, 5, nlp, corruption="substitute", faithful="article")
    assert pairs[0]["faithful"] in source and pairs[0]["swapped"] not in source
    with pytest.raises(ValueError, match="faithful"):
        build_news_swap_pairs(f, 5, nlp, faithful="reference")


def test_article_skip_takes_a_later_sentence_and_drops_articles_without_one(tmp_path, nlp):
    f = tmp_path / "news.jsonl"
    source = ("Michael Gove was sacked by Theresa May. It rained in Rome on Monday. "
              "Boris Johnson thanked Rishi Sunak. Nothing else happened.")
    f.write_text(json.dumps({"id": 5, "source": source, "summary": "It rained ."}) + "\n"
                 + json.dumps({"id": 6, "source": "Michael Gove was sacked by Theresa May.", "summary": "x"}) + "\n")
    first = build_news_swap_pairs(f, 5, nlp, faithful="article")
    assert [p["id"] for p in first] == ["news-5-sentence0", "news-6-sentence0"]
    later = build_news_swap_pairs(f, 5, nlp, faithful="article", article_skip=1)
    assert [(p["id"], p["faithful"]) for p in later] == [("news-5-sentence2", "Boris Johnson thanked Rishi Sunak.")]
    for bad in ({"article_skip": -1}, {"article_skip": 1, "faithful": "summary"}):
        with pytest.raises(ValueError, match="article_skip"):
            build_news_swap_pairs(f, 5, nlp, **{"faithful": "article", **bad})


def test_teacher_forced_mode_scores_the_reader_on_dev_b(data_dir, nlp, tmp_path):
    from quals_fast.checkpoint import default_model_dir
    from quals_fast.cli import main

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("the default model is not embedded in this checkout")
    out = tmp_path / "tf.json"
    assert main(["eval-swaps", "--teacher-forced", "--pairs", "12", "--data-dir", str(data_dir / "squad"),
                 "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["paragraphs"] == 12
    for name in ("wrong_answer", "swapped_paragraph", "distractor"):
        r = result[name]
        assert r["pairs"] >= 1 and 0.0 <= r["ranked_right"] <= 1.0 and r["mean_gap"] == r["mean_gap"]


def test_teacher_forced_mode_refuses_news_inputs(tmp_path):
    from quals_fast.cli import main

    with pytest.raises(SystemExit, match="--teacher-forced reads SQuAD dev-b"):
        main(["eval-swaps", "--teacher-forced", "--news-file", str(tmp_path / "x.jsonl")])
