"""Human-correlation evaluation: label aggregation, correlation maths, a resumable run."""
import json
import math

import numpy as np
import pytest

from quals_fast.evaluation import (evaluate, format_table, human_score, load_qags, ngram_overlap, partial_pearson, pearson,
                                   spearman)


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


def test_ngram_overlap_counts_copied_word_trigrams():
    article = "Arsenal beat Chelsea 2-1 at the Emirates Stadium on Sunday."
    assert ngram_overlap(article, "arsenal beat chelsea") == 1.0
    assert ngram_overlap(article, "Chelsea beat Arsenal 2-1") == 0.0  # same words, other roles
    assert ngram_overlap(article, "Arsenal beat Chelsea 3-0") == pytest.approx(1 / 3)
    assert ngram_overlap(article, "Beat Chelsea, 2-1!") == 1.0
    assert ngram_overlap(article, "Chelsea won") == 0.0  # shorter than n: one bigram
    assert ngram_overlap(article, "stadium") == 1.0
    with pytest.raises(ValueError, match="no words"):
        ngram_overlap(article, " ... ")


def test_partial_pearson_removes_what_the_control_explains():
    rng = np.random.default_rng(0)
    z = rng.normal(size=400)
    noise_x, noise_y = rng.normal(size=400), rng.normal(size=400)
    # x and y agree only through z: nothing is left once z is taken out
    x, y = z + 0.3 * noise_x, z + 0.3 * noise_y
    assert pearson(x, y) > 0.8 and abs(partial_pearson(x, y, z)) < 0.15
    # x carries y's own part too: that survives
    y2 = z + noise_y
    x2 = z + noise_y + 0.3 * noise_x
    assert partial_pearson(x2, y2, z) > 0.9
    # the textbook formula for one control variable
    a, b, c = pearson(x2, y2), pearson(x2, z), pearson(y2, z)
    assert partial_pearson(x2, y2, z) == pytest.approx((a - b * c) / math.sqrt((1 - b * b) * (1 - c * c)))
    assert math.isnan(partial_pearson([1.0, 2.0], [2.0, 1.0], [0.0, 1.0]))


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
    recs = [json.loads(line) for line in lines]
    assert [r["item"] for r in recs] == [0, 1] and any(r["pairs"] for r in recs)
    for r in recs:
        assert len(r["qa"]) == r["pairs"]
        for pair in r["qa"]:
            # what QUALS averages, readable back from the file
            assert pair["delta"] == pytest.approx(pair["source_score"] - pair["summary_score"])
            assert len(pair["source_token_scores"]) == len(pair["token_strings"])
        if r["pairs"]:
            assert r["quals"] == pytest.approx(sum(p["delta"] for p in r["qa"]) / r["pairs"])
    again = evaluate(scorer, data_dir / "qags", out, limit=2, progress=False)
    assert len((out / "mturk_cnndm.scores.jsonl").read_text().splitlines()) == 2
    assert again["QAGS-XSUM"]["items"] == 2
    row = again["QAGS-CNNDM"]
    assert {"overlap_pearson", "overlap_spearman", "pearson_beyond_overlap"} <= set(row)
    text = format_table(again, "tiny")
    assert "3-gram overlap" in text and "beyond the overlap" in text and text.count("\n") == 3


def test_bench_correlation_reuses_saved_quals_and_compares_on_common_items(tmp_path, data_dir):
    """`quals-fast bench --correlation N --quals-scores DIR`: QUALS comes from an eval-correlation
    folder, QAGS is scored; each is correlated over what it scored, and both over the common set."""
    from types import SimpleNamespace

    from quals_fast.bench_cli import Pipelines, run_correlation

    n = 6
    models = {}
    for role in ("quals", "qg", "qa"):
        models[role] = tmp_path / role
        models[role].mkdir()
        (models[role] / "training_info.json").write_text("{}")
    saved = tmp_path / "corr"
    saved.mkdir()
    human = {name: [h for _, _, h in load_qags(data_dir / "qags" / f)[:n]]
             for name, f in (("cnndm", "mturk_cnndm.jsonl"), ("xsum", "mturk_xsum.jsonl"))}
    quals = [0.1, None, 0.5, 0.2, 0.9, 0.4, 7.0]  # one line more than asked: ignored
    for name in human:
        (saved / ("mturk_%s.scores.jsonl" % name)).write_text(
            "".join(json.dumps({"human": 0.0, "quals": q}) + "\n" for q in quals))
    qags_scores = [0.3, 0.2, None, 0.8, 0.1, 0.6]

    class FakeQAGS:
        def score(self, sources, summaries, progress=False):
            assert len(sources) == len(summaries) == n
            return [SimpleNamespace(score=s) for s in qags_scores]

    class NoEngine:
        def score(self, *a, **k):
            raise AssertionError("QUALS must come from the saved folder")

    pipes = Pipelines(NoEngine(), FakeQAGS(), None, [], {}, {"models": models})
    out = run_correlation(pipes, n, data_dir, log=lambda m: None, quals_scores=saved)
    assert set(out) == {"QAGS-CNNDM", "QAGS-XSUM"}
    row = out["QAGS-CNNDM"]
    h = human["cnndm"]
    assert row["quals"]["n"] == 5 and row["qags"]["n"] == 5
    both = [0, 3, 4, 5]
    assert row["quals (both scored)"]["n"] == row["qags (both scored)"]["n"] == 4
    want = spearman([quals[i] for i in both], [h[i] for i in both])
    got = row["quals (both scored)"]["spearman"]
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want)
    with pytest.raises(SystemExit, match="fewer"):
        run_correlation(pipes, 10, data_dir, log=lambda m: None, quals_scores=saved)


def test_bench_correlation_caches_qags_per_model(tmp_path, data_dir):
    """`--qags-scores FILE`: QAGS is scored once, written, and reused only for the same QG/QA models."""
    from types import SimpleNamespace

    from quals_fast.bench_cli import Pipelines, run_correlation

    models = {}
    for role in ("quals", "qg", "qa"):
        models[role] = tmp_path / role
        models[role].mkdir()
        (models[role] / "training_info.json").write_text("{}")
    calls, bars = [], []

    class FakeQAGS:
        def score(self, sources, summaries, progress=False):
            calls.append(len(sources))
            bars.append(progress)
            return [SimpleNamespace(score=0.1 * (i % 4)) for i in range(len(sources))]

    class NoEngine:
        def score(self, sources, summaries, batch_size=4, progress=False):
            return [SimpleNamespace(score=0.2 * (i % 3)) for i in range(len(sources))]

    cache = tmp_path / "qags.json"
    pipes = Pipelines(NoEngine(), FakeQAGS(), None, [], {}, {"models": models})
    first = run_correlation(pipes, 5, data_dir, log=lambda m: None, qags_scores=cache)
    assert calls == [5, 5] and cache.is_file()
    assert run_correlation(pipes, 4, data_dir, log=lambda m: None, qags_scores=cache) == \
        run_correlation(pipes, 4, data_dir, log=lambda m: None)   # from the cache: same figures
    assert calls == [5, 5, 4, 4]   # only the uncached call scored
    assert first["QAGS-XSUM"]["qags"]["n"] == 5
    run_correlation(pipes, 6, data_dir, log=lambda m: None, qags_scores=cache)   # cache too short
    assert calls[-2:] == [6, 6]
    other = dict(models, qg=tmp_path / "quals")
    run_correlation(Pipelines(NoEngine(), FakeQAGS(), None, [], {}, {"models": other}), 4, data_dir,
                    log=lambda m: None, qags_scores=cache)   # other generator: scored again
    assert calls[-2:] == [4, 4]
    run_correlation(pipes, 3, data_dir, log=lambda m: None, progress=True)
    assert bars[-2:] == [True, True] and not any(bars[:-2])


def _correlation_diff():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "correlation_diff.py"
    spec = importlib.util.spec_from_file_location("_correlation_diff", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_correlation_diff_paired_bootstrap():
    mod = _correlation_diff()
    rng = np.random.default_rng(1)
    human = rng.random(60)
    old = [{"human": h, "quals": h + rng.normal(0, 1.0)} for h in human]
    new = [{"human": h, "quals": h + rng.normal(0, 0.1)} for h in human]
    new[3]["quals"] = None   # left out of both sides
    out = mod.paired_difference(old, new, resamples=300, seed=0)
    assert out["both_scored"] == 59
    assert out["difference"] == pytest.approx(out["new_pearson"] - out["old_pearson"])
    lo, hi = out["interval_95"]
    assert 0 < lo < out["difference"] < hi     # a much less noisy metric: a clearly positive change
    assert mod.paired_difference(old, old, 50, 0)["interval_95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="different numbers"):
        mod.paired_difference(old, new[:-1], 10, 0)
    one = mod.pearson_interval(new, resamples=300, seed=0)
    assert one["scored"] == 59 and one["pearson"] == pytest.approx(out["new_pearson"])
    assert one["interval_95"][0] < one["pearson"] < one["interval_95"][1] < 1


def test_correlation_diff_seed_spread(tmp_path):
    mod = _correlation_diff()
    rng = np.random.default_rng(2)
    human = rng.random(80)

    def model(noise):
        return {name: [{"human": h, "quals": h + rng.normal(0, noise)} for h in human] for name in mod.FILES}

    draws = [model(1.0) for _ in range(3)]
    out = mod.seed_spread(draws, model(0.05))
    for key in list(mod.FILES) + ["combined"]:
        row = out[key]
        assert len(row["draws"]) == 3 and row["sd"] > 0
        assert row["mean"] == pytest.approx(np.mean(row["draws"]))
        assert row["z"] == pytest.approx((row["candidate"] - row["mean"]) / row["sd"])
        assert row["draws_below_candidate"] == 3 and row["z"] > 2   # far less noise: above every draw
    assert out["combined"]["candidate"] == pytest.approx(sum(out[n]["candidate"] for n in mod.FILES))
    same = mod.seed_spread(draws, draws[0])
    assert same["combined"]["candidate"] == same["combined"]["draws"][0]
    with pytest.raises(ValueError, match="at least two"):
        mod.seed_spread(draws[:1], draws[0])

    # The command line: folders as eval-correlation writes them.
    folders = []
    for i, d in enumerate(draws + [model(0.05)]):
        folder = tmp_path / str(i)
        folder.mkdir()
        for name, f in mod.FILES.items():
            (folder / f).write_text("".join(json.dumps(r) + "\n" for r in d[name]))
        folders.append(str(folder))
    assert mod.main([folders[0], folders[3], "--draws", *folders[:3], "--resamples", "20"]) == 0
