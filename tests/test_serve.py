"""`quals-fast serve` on the tiny fixture model: answers, dynamic batching, limits, health, metrics,
graceful shutdown."""
import asyncio
import re
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from quals_fast import QualsScorer  # noqa: E402
from quals_fast.serve import create_app  # noqa: E402
from test_scorer import SOURCES, SUMMARIES  # noqa: E402  (the texts the tiny model was made for)


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return QualsScorer(tiny_model_dir, max_len=16)


@pytest.fixture(scope="module")
def expected(scorer):
    return [r.to_dict() for r in scorer.score(SOURCES, SUMMARIES)]


@pytest.fixture()
def client(scorer):
    with TestClient(create_app(scorer, max_batch_size=8, max_wait_ms=50, max_items=4, max_text_chars=200)) as c:
        yield c


def assert_same(got, want):
    assert got["error"] is None
    assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert [(p["question"], p["answer"], p["tokens"]) for p in got["pairs"]] == \
        [(p["question"], p["answer"], p["tokens"]) for p in want["pairs"]]
    for g, w in zip(got["pairs"], want["pairs"]):
        assert g["source_token_scores"] == pytest.approx(w["source_token_scores"], abs=1e-5)


def metric(text, name):
    """Sum of a metric's samples named exactly `name` (any labels)."""
    return sum(float(v) for v in re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M))


def test_one_item_and_many_items_equal_direct_scores(client, expected):
    r = client.post("/score", json={"source": SOURCES[0], "summary": SUMMARIES[0], "id": "a"})
    assert r.status_code == 200
    [res] = r.json()["results"]
    assert res["id"] == "a"
    assert_same(res, expected[0])
    r = client.post("/score", json={"items": [{"source": s, "summary": m, "id": i}
                                              for i, (s, m) in enumerate(zip(SOURCES, SUMMARIES))]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["id"] for x in results] == [0, 1, 2]
    for got, want in zip(results, expected):
        assert_same(got, want)


@pytest.mark.parametrize("body, fragment", [
    ({"source": "x"}, "summary"),
    ({"source": "the man", "summary": "   "}, "whitespace"),
    ({"source": "the man", "summary": ""}, "at least 1 character"),
    ({"source": "the man " * 40, "summary": "the man"}, "at most 200 characters"),
    ({"items": []}, "at least 1 item"),
    ({"items": [{"source": "a", "summary": "a"}] * 5}, "at most 4 items"),
    ({"source": 3, "summary": "the man"}, "valid string"),
])
def test_bad_input_is_a_clear_422(client, body, fragment):
    r = client.post("/score", json=body)
    assert r.status_code == 422
    assert fragment in r.text


def test_oversized_and_malformed_bodies_are_4xx(client):
    r = client.post("/score", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_health_metrics_and_openapi(client, tiny_model_dir):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["max_batch_size"] == 8 and h["model"] == str(tiny_model_dir)
    client.post("/score", json={"source": SOURCES[1], "summary": SUMMARIES[1]})
    client.post("/score", json={"source": "x"})
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert metric(m.text, "quals_requests_total") >= 2
    assert 'quals_requests_total{path="/score",status="422"} 1.0' in m.text
    assert metric(m.text, "quals_batch_size_count") == 1
    assert metric(m.text, "quals_request_latency_seconds_count") == 1
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {s["$ref"].rsplit("/", 1)[1] for s in body["anyOf"]} == {"ScoreBatch", "ScoreItem"}
    ok = spec["paths"]["/score"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/ScoreResponse")
    assert set(spec["components"]["schemas"]["ScoreResult"]["properties"]) >= {"score", "pairs", "error", "id"}
    assert spec["components"]["schemas"]["ScoreBatch"]["properties"]["items"]["maxItems"] == 4


def test_concurrent_requests_are_merged_into_batches(scorer, expected):
    import httpx

    app = create_app(scorer, max_batch_size=16, max_wait_ms=300)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(*[c.post("/score", json={"source": SOURCES[i % 3], "summary": SUMMARIES[i % 3]})
                                        for i in range(9)])
            return rs, (await c.get("/metrics")).text

    responses, text = asyncio.run(main())
    for i, r in enumerate(responses):
        assert r.status_code == 200
        assert_same(r.json()["results"][0], expected[i % 3])
    batches = metric(text, "quals_batch_size_count")
    assert metric(text, "quals_batch_size_sum") == 9
    assert batches < 9, "nine concurrent requests should share batches, got %d batches" % batches
    assert metric(text, "quals_batch_requests_sum") == 9


def test_a_lone_request_waits_about_max_wait(scorer):
    with TestClient(create_app(scorer, max_batch_size=16, max_wait_ms=0)) as fast:
        fast.post("/score", json={"source": SOURCES[0], "summary": SUMMARIES[0]})  # warm up
        t = time.perf_counter()
        fast.post("/score", json={"source": SOURCES[0], "summary": SUMMARIES[0]})
        base = time.perf_counter() - t
    with TestClient(create_app(scorer, max_batch_size=16, max_wait_ms=400)) as slow:
        t = time.perf_counter()
        slow.post("/score", json={"source": SOURCES[0], "summary": SUMMARIES[0]})
        waited = time.perf_counter() - t
        text = slow.get("/metrics").text
    assert 0.4 <= waited < base + 0.4 + 2.0  # waits for company, but not longer than max-wait
    assert metric(text, "quals_queue_wait_seconds_sum") == pytest.approx(0.4, abs=0.2)


class SlowScorer:
    """Delegates to a real scorer after a pause, so a request is surely in flight at shutdown."""

    def __init__(self, scorer, pause):
        self.scorer, self.pause, self.qagen = scorer, pause, scorer.qagen

    def score(self, *args, **kwargs):
        time.sleep(self.pause)
        return self.scorer.score(*args, **kwargs)


def test_graceful_shutdown_finishes_in_flight_requests(scorer, expected):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(SlowScorer(scorer, 1.0), max_wait_ms=0), host="127.0.0.1",
                                           port=port, log_level="warning", timeout_graceful_shutdown=20))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    answer = {}

    def call():
        answer["r"] = httpx.post("http://127.0.0.1:%d/score" % port, timeout=30,
                                 json={"source": SOURCES[2], "summary": SUMMARIES[2]})

    client = threading.Thread(target=call)
    client.start()
    time.sleep(0.5)  # the request is now being scored
    server.should_exit = True
    client.join(30)
    thread.join(30)
    assert not thread.is_alive()
    assert answer["r"].status_code == 200
    assert_same(answer["r"].json()["results"][0], expected[2])


def test_cli_registers_serve():
    from quals_fast.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "9", "--max-batch-size", "4", "--max-wait-ms", "5",
                                      "--max-len", "16"])
    assert (args.port, args.max_batch_size, args.max_wait_ms, args.max_len) == (9, 4, 5.0, 16)
