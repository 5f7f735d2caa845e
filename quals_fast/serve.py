"""`quals-fast serve`: QUALS over HTTP (FastAPI + uvicorn) with dynamic batching.

POST /score takes one item {"source", "summary"} or {"items": [...]}; requests that arrive
together are scored as one batch (at most --max-batch-size items, a lone request waiting at most
--max-wait-ms), on one worker thread, so the event loop keeps accepting requests meanwhile.
GET /health, GET /metrics (Prometheus). Install with `pip install quals-fast[serve]`."""
# Only the stdlib at module level: `quals-fast --help` must work without the serve extra.
import argparse
import asyncio
import concurrent.futures
import contextlib
import time
from dataclasses import dataclass, field
from typing import List

DEFAULT_MAX_ITEMS = 64
DEFAULT_MAX_TEXT_CHARS = 20_000
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class _Pending:
    sources: List[str]
    summaries: List[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Metrics:
    """Per-app registry, so that several apps (tests, benchmarks) can live in one process."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("quals_requests", "HTTP requests by path and status code", ["path", "status"],
                                registry=self.registry)
        self.items = Counter("quals_items_scored", "(source, summary) items scored", registry=self.registry)
        self.batch_size = Histogram("quals_batch_size", "items per model batch", buckets=BATCH_SIZE_BUCKETS,
                                    registry=self.registry)
        self.batch_requests = Histogram("quals_batch_requests", "requests merged into one model batch",
                                        buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.latency = Histogram("quals_request_latency_seconds", "POST /score latency, queueing included",
                                 registry=self.registry)
        self.batch_latency = Histogram("quals_batch_latency_seconds", "model time per batch",
                                       registry=self.registry)
        self.queue_wait = Histogram("quals_queue_wait_seconds", "time from arrival to the start of its batch",
                                    registry=self.registry)
        self.queued = Gauge("quals_queued_requests", "requests waiting for a batch", registry=self.registry)


class Batcher:
    """Collects queued requests into batches and scores them on a single worker thread.

    A batch starts with the oldest queued request and closes when it holds max_batch_size items or
    max_wait_ms after that request arrived or the model became free, whichever is later: a lone
    request waits at most max_wait_ms, and under load the clients just answered get max_wait_ms to
    send their next request into the coming batch instead of trailing one batch behind."""

    def __init__(self, scorer, max_batch_size: int, max_wait_ms: float, metrics: Metrics):
        self.scorer = scorer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: asyncio.Queue = None
        self._carry = None
        self._model_free_since = 0.0
        self._task = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="quals-score")

    def start(self):
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, sources, summaries):
        fut = asyncio.get_running_loop().create_future()
        self.metrics.queued.inc()
        await self.queue.put(_Pending(sources, summaries, fut))
        return await fut

    async def stop(self):
        """Scores whatever is still queued, then stops the worker."""
        await self.queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._executor.shutdown(wait=True)

    async def _next(self, timeout):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return self.queue.get_nowait()
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def _collect(self):
        first = await self._next(None)
        batch, size = [first], len(first.sources)
        while size < self.max_batch_size:
            try:
                opened = max(first.enqueued, self._model_free_since)
                item = await self._next(opened + self.max_wait - time.monotonic())
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if size + len(item.sources) > self.max_batch_size:
                self._carry = item  # opens the next batch instead of overfilling this one
                break
            batch.append(item)
            size += len(item.sources)
        return batch

    async def _run(self):
        from quals_fast.distributed import score_isolating_failures

        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            started = time.monotonic()
            self.metrics.queued.dec(len(batch))
            for p in batch:
                self.metrics.queue_wait.observe(started - p.enqueued)
            sources = [s for p in batch for s in p.sources]
            summaries = [s for p in batch for s in p.summaries]
            self.metrics.batch_size.observe(len(sources))
            self.metrics.batch_requests.observe(len(batch))
            try:
                results = await loop.run_in_executor(
                    self._executor, score_isolating_failures, self.scorer, sources, summaries, self.max_batch_size)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                self.metrics.items.inc(len(sources))
                self.metrics.batch_latency.observe(time.monotonic() - started)
                offset = 0
                for p in batch:
                    if not p.future.done():  # a client that went away cancels its future
                        p.future.set_result(results[offset: offset + len(p.sources)])
                    offset += len(p.sources)
            self._model_free_since = time.monotonic()
            for _ in batch:
                self.queue.task_done()


def create_app(scorer=None, model=None, backend="torch", device="cpu", max_batch_size=16, max_wait_ms=10.0,
               max_items=DEFAULT_MAX_ITEMS, max_text_chars=DEFAULT_MAX_TEXT_CHARS, max_body_bytes=None, **options):
    """The ASGI app. Pass a ready `scorer`, or `model` (+ backend, device, stage options)."""
    from typing import Optional, Union

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, Field, field_validator

    from quals_fast.scorer import QualsScorer

    if max_batch_size < 1 or max_wait_ms < 0 or max_items < 1 or max_text_chars < 1:
        raise ValueError("max_batch_size, max_items and max_text_chars must be >= 1 and max_wait_ms >= 0")
    if scorer is None:
        scorer = QualsScorer(model, backend=backend, device=device, **options)
    if max_body_bytes is None:
        # every character may take up to 6 bytes as a JSON \\uXXXX escape, plus room for the keys
        max_body_bytes = max_items * (2 * max_text_chars * 6 + 1024) + 1024
    metrics = Metrics()
    batcher = Batcher(scorer, max_batch_size, max_wait_ms, metrics)

    Text = Field(min_length=1, max_length=max_text_chars)

    class ScoreItem(BaseModel):
        source: str = Text
        summary: str = Text
        id: Optional[Union[int, str]] = Field(None, description="echoed back in the result")

        @field_validator("source", "summary")
        @classmethod
        def not_blank(cls, value):  # QualsScorer's rule (validate_pair), as a 422 instead of an error result
            if not value.strip():
                raise ValueError("is empty or whitespace only")
            return value

    class ScoreBatch(BaseModel):
        items: List[ScoreItem] = Field(min_length=1, max_length=max_items)

    class Pair(BaseModel):
        question: str
        answer: str
        summary_score: float = Field(description="normalized generation score given the summary")
        source_score: float = Field(description="mean teacher-forced log-prob given the source")
        delta: float = Field(description="source_score - summary_score")
        tokens: List[int]
        token_strings: List[str]
        summary_token_scores: List[float]
        source_token_scores: List[float]

    class ScoreResult(BaseModel):
        id: Optional[Union[int, str]] = None
        score: Optional[float] = Field(description="QUALS; null when no QA pair survives (see reason)")
        pairs: List[Pair]
        reason: Optional[str] = None
        error: Optional[str] = Field(None, description="set when this item could not be scored")
        num_candidates: int
        source_tokens: int
        source_truncated: bool
        summary_tokens: int
        summary_truncated: bool

    class ScoreResponse(BaseModel):
        results: List[ScoreResult] = Field(description="one per item, in request order")

    class Health(BaseModel):
        status: str
        model: str
        max_batch_size: int
        max_wait_ms: float

    class Problem(BaseModel):
        detail: str

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        # uvicorn calls this after the open connections have finished: the queue is normally
        # empty here, and whatever is not gets scored before the process exits
        await batcher.stop()

    app = FastAPI(title="quals-fast", version=_version(), lifespan=lifespan,
                  description="QUALS factual-consistency scores for (source, summary) pairs.")
    known_paths = {"/score", "/health", "/metrics", "/openapi.json", "/docs"}
    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.middleware("http")
    async def count_and_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            response = JSONResponse({"detail": "request body over %d bytes" % max_body_bytes}, status_code=413)
        else:
            response = await call_next(request)
        path = request.url.path if request.url.path in known_paths else "other"  # bounded label values
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.post("/score", response_model=ScoreResponse,
              responses={413: {"model": Problem, "description": "request body too large"},
                         503: {"model": Problem, "description": "scoring failed"}},
              summary="QUALS for one item or a list of items")
    async def score(body: Union[ScoreBatch, ScoreItem]):
        items = body.items if isinstance(body, ScoreBatch) else [body]
        start = time.monotonic()
        try:
            results = await batcher.submit([it.source for it in items], [it.summary for it in items])
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"detail": "%s: %s" % (type(exc).__name__, exc)}, status_code=503)
        finally:
            metrics.latency.observe(time.monotonic() - start)
        return {"results": [dict(r.to_dict(), id=it.id) for it, r in zip(items, results)]}

    @app.get("/health", response_model=Health)
    async def health():
        path = getattr(getattr(scorer.qagen, "checkpoint", None), "path", None)
        return {"status": "ok", "model": str(path), "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
             summary="Prometheus metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _version():
    from quals_fast import __version__

    return __version__


def register_cli(subparsers):
    from quals_fast.backends import BACKENDS
    from quals_fast.score_cli import add_stage_flags

    p = subparsers.add_parser("serve", help="serve QUALS over HTTP with dynamic batching",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="QAGen model folder (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=16, help="items per model batch (default: 16)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="longest a request waits for others to batch with (default: 10)")
    p.add_argument("--max-items", type=int, default=DEFAULT_MAX_ITEMS, help="items per request (default: %(default)s)")
    p.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS,
                   help="characters per source or summary (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on shutdown (default: 30)")
    add_stage_flags(p)
    p.set_defaults(func=run)
    return p


def run(args):
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("quals-fast serve needs the serve extra: pip install 'quals-fast[serve]'") from None
    from quals_fast.score_cli import stage_options_from_args

    app = create_app(model=args.model, backend=args.backend, device=args.device, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, max_items=args.max_items, max_text_chars=args.max_text_chars,
                     **stage_options_from_args(args))
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.graceful_timeout)
    return 0
