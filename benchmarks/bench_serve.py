"""Loopback load test of `quals-fast serve`: 1, 4 and 16 concurrent clients, a fixed number of
single-item requests each, every answer checked against a direct QualsScorer.

    python benchmarks/bench_serve.py             # prints the table
    pytest benchmarks/bench_serve.py             # the same, as a test that fails on a lost or wrong answer
    QUALS_BENCH_SMOKE=1                          CI: few requests
    QUALS_BENCH_SERVE_REQUESTS=96                requests per concurrency level
    QUALS_BENCH_SERVE_MAX_BATCH=16 QUALS_BENCH_SERVE_MAX_WAIT_MS=10

The server runs as `quals-fast serve` in a subprocess on 127.0.0.1 (so client and server do not
share a GIL), on the embedded model when it is installed, else on the tiny random test model with
max_len=16. Each level is bounded in time (QUALS_BENCH_SERVE_LEVEL_TIMEOUT seconds); a level that
runs out of time fails instead of reporting a partial throughput."""
import asyncio
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = os.environ.get("QUALS_BENCH_SMOKE") == "1"
CLIENTS = (1, 4, 16)
REQUESTS = int(os.environ.get("QUALS_BENCH_SERVE_REQUESTS", "16" if SMOKE else "96"))
MAX_BATCH = int(os.environ.get("QUALS_BENCH_SERVE_MAX_BATCH", "16"))
MAX_WAIT_MS = float(os.environ.get("QUALS_BENCH_SERVE_MAX_WAIT_MS", "10"))
LEVEL_TIMEOUT = float(os.environ.get("QUALS_BENCH_SERVE_LEVEL_TIMEOUT", "300"))
DISTINCT_PAIRS = 24


def model_and_options(workdir):
    default = REPO / "quals_fast" / "models" / "qagen-minilm"
    if default.is_dir():
        return default, {}
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_model import build_tiny_model

    return build_tiny_model(Path(workdir) / "tiny"), {"max_len": 16}


def make_pairs(n, seed=0):
    """Short news-like pairs over the tiny model's vocabulary (plain English for a real model)."""
    rng = random.Random(seed)
    who = ["john smith", "mary", "the police", "the president", "the team", "the coach", "the minister"]
    did = ["won the game", "lost the match", "opened the bank", "closed the court", "arrested the man",
           "found two people", "killed ten people"]
    where = ["in paris", "in london", "in berlin", "in the city"]
    when = ["on monday", "on tuesday", ""]
    pairs = []
    for _ in range(n):
        w, d, p = rng.choice(who), rng.choice(did), rng.choice(where)
        source = "%s said %s %s %s %s" % (rng.choice(who), w, d, p, rng.choice(when))
        summary = "%s %s %s" % (w, rng.choice(did) if rng.random() < 0.3 else d, p)
        pairs.append((" ".join(source.split()), summary))
    return pairs


def expected_results(model, options, pairs):
    from quals_fast import QualsScorer

    scorer = QualsScorer(model, **options)
    return [scorer.score([s], [m])[0].to_dict() for s, m in pairs]


def wrong_answer(got, want):
    """Why a served result differs from the direct one, or None (batching changes floats by ~1e-7)."""
    if got.get("error"):
        return "error: %s" % got["error"]
    if (got["score"] is None) != (want["score"] is None) or (
            want["score"] is not None and abs(got["score"] - want["score"]) > 1e-4):
        return "score %r != %r" % (got["score"], want["score"])
    if [(p["question"], p["answer"]) for p in got["pairs"]] != [(p["question"], p["answer"]) for p in want["pairs"]]:
        return "different QA pairs"
    return None


def start_server(model, options):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "quals_fast.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch-size", str(MAX_BATCH), "--max-wait-ms", str(MAX_WAIT_MS)]
    for k, v in options.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, "http://127.0.0.1:%d" % port


def wait_ready(proc, base, timeout=120):
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("quals-fast serve exited: %s" % proc.stderr.read()[-2000:])
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("quals-fast serve did not become ready in %ds" % timeout)


def batch_stats(metrics_text):
    def total(name):
        return sum(float(v) for v in re.findall(r"^%s (\S+)$" % name, metrics_text, re.M))

    return total("quals_batch_size_sum"), total("quals_batch_size_count")


async def run_level(base, clients, pairs, expected, n_requests):
    import httpx

    latencies, problems = [], []
    counter = iter(range(n_requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=LEVEL_TIMEOUT, limits=limits) as client:
        before = batch_stats((await client.get("/metrics")).text)

        async def worker():
            for i in counter:
                k = i % len(pairs)
                t = time.perf_counter()
                r = await client.post("/score", json={"source": pairs[k][0], "summary": pairs[k][1], "id": i})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    problems.append("request %d: HTTP %d %s" % (i, r.status_code, r.text[:200]))
                    continue
                [res] = r.json()["results"]
                why = "id %r came back for request %d" % (res["id"], i) if res["id"] != i else \
                    wrong_answer(res, expected[k])
                if why:
                    problems.append("request %d: %s" % (i, why))

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(clients)]), LEVEL_TIMEOUT)
        wall = time.perf_counter() - start
        after = batch_stats((await client.get("/metrics")).text)
    if len(latencies) != n_requests:
        problems.append("%d of %d requests answered" % (len(latencies), n_requests))
    return wall, latencies, problems, (after[0] - before[0]) / max(1.0, after[1] - before[1])


def run_load_test(n_requests=REQUESTS, clients_levels=CLIENTS):
    """-> (rows, problems): one row per concurrency level."""
    import numpy as np

    with tempfile.TemporaryDirectory() as workdir:
        model, options = model_and_options(workdir)
        pairs = make_pairs(DISTINCT_PAIRS)
        expected = expected_results(model, options, pairs)
        proc, base = start_server(model, options)
        try:
            wait_ready(proc, base)
            asyncio.run(run_level(base, 1, pairs, expected, min(4, n_requests)))  # warm-up, not reported
            rows, problems = [], []
            for clients in clients_levels:
                wall, lat, bad, mean_batch = asyncio.run(run_level(base, clients, pairs, expected, n_requests))
                problems += ["%d clients: %s" % (clients, p) for p in bad]
                p50, p95, p99 = np.percentile(np.array(lat) * 1000, [50, 95, 99])
                rows.append(dict(clients=clients, requests=len(lat), seconds=wall, throughput=len(lat) / wall,
                                 p50_ms=p50, p95_ms=p95, p99_ms=p99, mean_batch=mean_batch, wrong=len(bad)))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows, problems, model


def format_table(rows):
    lines = ["| clients | requests | req/s | p50 ms | p95 ms | p99 ms | mean batch | lost or wrong |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %d | %d | %.1f | %.0f | %.0f | %.0f | %.1f | %d |" % (
            r["clients"], r["requests"], r["throughput"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["mean_batch"],
            r["wrong"]))
    return "\n".join(lines)


def test_serve_under_load(benchmark):
    import pytest

    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    rows, problems, _ = benchmark.pedantic(run_load_test, rounds=1, iterations=1)
    print("\n" + format_table(rows))
    assert not problems, "\n".join(problems[:20])
    assert [r["requests"] for r in rows] == [REQUESTS] * len(CLIENTS)


if __name__ == "__main__":
    rows, problems, model = run_load_test()
    print("model: %s; %d cores; max batch %d, max wait %g ms" % (model, os.cpu_count(), MAX_BATCH, MAX_WAIT_MS))
    print(format_table(rows))
    if problems:
        print("\n".join(problems[:20]), file=sys.stderr)
        sys.exit(1)
