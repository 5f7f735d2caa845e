"""score_dataset and `quals-fast score --ray` on a local Ray instance started here (2 CPUs)."""
import json

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from quals_fast import QualsScorer  # noqa: E402
from quals_fast.cli import main  # noqa: E402
from quals_fast.distributed import ROW_INDEX, iter_scored_rows, score_dataset  # noqa: E402
from test_scorer import SOURCES, SUMMARIES  # noqa: E402  (the texts the tiny model was made for)

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


def test_rows_come_back_once_in_order_failures_in_place_despite_a_killed_worker(local_ray, tiny_model_dir, direct,
                                                                                tmp_path):
    # one test, since every Ray Data run pays for its actors importing torch
    marker = tmp_path / "died"
    items = rows(8)
    items[2]["summary"] = "   "
    items[5]["source"] = None
    # half a CPU each: two workers on this 2-CPU Ray leave room for the reading tasks
    ds = score_dataset(ray.data.from_items(items), model=tiny_model_dir, num_workers=2, cpus_per_worker=0.5,
                       batch_size=2, runtime_env={"env_vars": {"QUALS_FAST_TEST_DIE_ONCE": str(marker)}}, **OPTIONS)
    out = list(iter_scored_rows(ds))
    assert marker.exists(), "no worker died: the retry path was not exercised"
    assert [r["id"] for r in out] == [it["id"] for it in items]  # every row exactly once, in order
    assert [r[ROW_INDEX] for r in out] == list(range(8))
    assert out[2]["error"] == "summary is empty or whitespace only" and out[2]["score"] is None
    assert out[5]["error"] == "source must be a string, got NoneType" and out[5]["score"] is None
    for i, (it, r) in enumerate(zip(items, out)):
        if i not in (2, 5):
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
