"""score_dataset and `quals-fast score --ray` on a local Ray instance started here (2 CPUs)."""
import json

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from quals_fast import QualsScorer  # noqa: E402
from quals_fast.cli import main  # noqa: E402
from quals_fast.distributed import ROW_INDEX, iter_scored_rows, score_dataset  # noqa: E402

SOURCES = ["the police said john smith was arrested in paris on monday", "mary won the game in london",
           "the storm killed ten people in the city"]
SUMMARIES = ["john smith was arrested in paris", "mary lost the match in berlin", "the storm killed two people"]
OPTIONS = dict(max_len=16)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def direct(tiny_model_dir):
    scorer = QualsScorer(tiny_model_dir, **OPTIONS)
    return {(s, m): r for s, m, r in zip(SOURCES, SUMMARIES, scorer.score(SOURCES, SUMMARIES))}


def rows(n):
    return [{"id": "doc-%d" % i, "source": SOURCES[i % 3], "summary": SUMMARIES[i % 3]} for i in range(n)]


def assert_matches(row, expected):
    assert row["error"] is None
    assert row["score"] == pytest.approx(expected.score, abs=1e-5)
    pairs = json.loads(row["pairs"])
    assert [(p["question"], p["answer"], p["tokens"]) for p in pairs] == \
        [(p.question, p.answer, p.tokens) for p in expected.pairs]


def test_rows_come_back_in_order_with_failures_in_place(local_ray, tiny_model_dir, direct):
    items = rows(7)
    items[2]["summary"] = "   "
    items[5]["source"] = None
    out = list(iter_scored_rows(score_dataset(ray.data.from_items(items), model=tiny_model_dir, batch_size=3,
                                              **OPTIONS)))
    assert [r["id"] for r in out] == [it["id"] for it in items]
    assert [r[ROW_INDEX] for r in out] == list(range(7))
    assert out[2]["error"] == "summary is empty or whitespace only" and out[2]["score"] is None
    assert out[5]["error"] == "source must be a string, got NoneType"
    for i in (0, 1, 3, 4, 6):
        assert_matches(out[i], direct[(SOURCES[i % 3], SUMMARIES[i % 3])])


def test_a_killed_worker_is_replaced_and_its_rows_retried(local_ray, tiny_model_dir, direct, tmp_path):
    marker = tmp_path / "died"
    items = rows(8)
    # half a CPU each: two workers on this 2-CPU Ray leave room for the reading tasks
    ds = score_dataset(ray.data.from_items(items), model=tiny_model_dir, num_workers=2, cpus_per_worker=0.5,
                       batch_size=2, runtime_env={"env_vars": {"QUALS_FAST_TEST_DIE_ONCE": str(marker)}}, **OPTIONS)
    out = list(iter_scored_rows(ds))
    assert marker.exists(), "no worker died: the test did not test anything"
    assert [r["id"] for r in out] == [it["id"] for it in items]  # every row exactly once, in order
    for it, r in zip(items, out):
        assert_matches(r, direct[(it["source"], it["summary"])])


def test_unknown_option_fails_before_any_actor_starts(local_ray, tiny_model_dir):
    with pytest.raises(TypeError, match="max_lenn"):
        score_dataset(ray.data.from_items(rows(1)), model=tiny_model_dir, max_lenn=3)


def test_cli_ray_jsonl_and_resume_match_the_one_process_path(local_ray, tiny_model_dir, tmp_path, capsys):
    lines = [json.dumps({"id": i if i % 2 else "x%d" % i, "source": SOURCES[i % 3], "summary": SUMMARIES[i % 3]})
             for i in range(5)]
    lines[1] = "{not json"
    lines.insert(3, "")
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    flags = ["--model", str(tiny_model_dir), "--max-len", "16", "--no-progress", "--batch-size", "2"]
    assert main(["score", "--input", str(src), "--output", str(tmp_path / "one.jsonl")] + flags) == 1
    assert main(["score", "--ray", "--input", str(src), "--output", str(tmp_path / "ray.jsonl")] + flags) == 1
    assert "line 2: invalid JSON" in capsys.readouterr().err
    one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["line"] for r in got] == [r["line"] for r in one] == [1, 2, 3, 5, 6]
    assert [r.get("id") for r in got] == [r.get("id") for r in one]
    for a, b in zip(got, one):
        assert set(a) == set(b) and a.get("error") == b.get("error")
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)

    # an interrupted --ray run continues after its last complete record
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join((tmp_path / "ray.jsonl").read_text().splitlines()[:3]) + "\n{\"line\": 5, \"sc")
    assert main(["score", "--ray", "--resume", "--input", str(src), "--output", str(part)] + flags) == 1
    assert [json.loads(x)["line"] for x in part.read_text().splitlines()] == [1, 2, 3, 5, 6]


def test_parquet_input_is_numbered_by_row(local_ray, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from quals_fast.distributed import read_input_dataset

    pq.write_table(pa.table({"id": [10, 11, 12], "source": SOURCES, "summary": SUMMARIES}), tmp_path / "in.parquet")
    got = read_input_dataset(str(tmp_path / "in.parquet")).take_all()
    assert [(r[ROW_INDEX], json.loads(r["id_json"]), r["source"], r["summary"]) for r in got] == \
        [(i, 10 + i, s, m) for i, (s, m) in enumerate(zip(SOURCES, SUMMARIES))]
    assert not any(isinstance(r["error"], str) for r in got)
    pq.write_table(pa.table({"source": SOURCES}), tmp_path / "bad.parquet")
    got = read_input_dataset(str(tmp_path / "bad.parquet")).take_all()
    assert [r["error"] for r in got] == ["missing field(s): summary"] * 3
