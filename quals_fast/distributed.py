"""Corpus scoring on Ray Data: a pool of actors, each loading the model once.

    import ray
    from quals_fast.distributed import score_dataset
    ds = ray.data.read_parquet("pairs.parquet")          # columns source, summary (+ any others)
    out = score_dataset(ds, model="path/to/model", num_workers=4, gpus_per_worker=1)
    out.write_parquet("scores/")

Install with `pip install quals-fast[ray]`. Ray is imported only inside the functions that need it,
so `quals_fast.distributed.score_isolating_failures` also serves the HTTP service without Ray."""
import json
import os
from typing import List, Optional

# Columns every output row gets, in QualsResult.to_dict() order (pairs as a JSON string, because
# an Arrow list of structs cannot be typed from a batch whose rows all have no pair).
RESULT_COLUMNS = ("score", "pairs", "reason", "error", "num_candidates", "source_tokens", "source_truncated",
                  "summary_tokens", "summary_truncated")
ROW_INDEX = "_quals_row"

# Test hook: the first actor that sees this variable creates the file it names and dies on its
# first batch, which is how the tests show that Ray replaces the worker and retries its rows.
_DIE_ONCE_ENV = "QUALS_FAST_TEST_DIE_ONCE"


def score_isolating_failures(scorer, sources: List, summaries: List, batch_size: int):
    """QualsScorer.score(on_error="report") that never lets one input sink the others: when a
    batch raises, its inputs are rescored one by one and each one that still raises gets the
    exception as its `.error`."""
    from quals_fast.scorer import QualsResult

    try:
        return scorer.score(sources, summaries, batch_size=batch_size, on_error="report")
    except Exception:
        if len(sources) == 1:
            raise
    results = []
    for src, summ in zip(sources, summaries):
        try:
            results.append(scorer.score([src], [summ], on_error="report")[0])
        except Exception as exc:  # noqa: BLE001 - reported in the row, by design
            results.append(QualsResult(None, error="%s: %s" % (type(exc).__name__, exc)))
    return results


def _result_columns(results):
    cols = {name: [] for name in RESULT_COLUMNS}
    for res in results:
        d = res.to_dict()
        d["pairs"] = json.dumps(d["pairs"], ensure_ascii=False)
        for name in RESULT_COLUMNS:
            cols[name].append(d[name])
    return cols


class _ScoringActor:
    """One per worker: loads the model in __init__, then scores a batch per call."""

    def __init__(self, model, backend, device, batch_size, threads, options):
        import torch

        from quals_fast.scorer import QualsScorer

        if threads:
            torch.set_num_threads(threads)
        self.scorer = QualsScorer(model, backend=backend, device=device, **options)
        self.batch_size = batch_size

    def _maybe_die(self):
        marker = os.environ.get(_DIE_ONCE_ENV)
        if not marker:
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def __call__(self, batch):
        self._maybe_die()
        n = len(batch[ROW_INDEX])
        missing = [c for c in ("source", "summary") if c not in batch]
        upstream = batch.get("error")
        rejected = {}
        for i in range(n):
            if missing:
                rejected[i] = "missing field(s): %s" % ", ".join(missing)
            elif upstream is not None and _is_error(upstream[i]):
                rejected[i] = upstream[i]
        todo = [i for i in range(n) if i not in rejected]
        results = dict(zip(todo, score_isolating_failures(
            self.scorer, [_text(batch["source"][i]) for i in todo], [_text(batch["summary"][i]) for i in todo],
            self.batch_size)))
        from quals_fast.scorer import QualsResult

        ordered = [results[i] if i in results else QualsResult(None, error=rejected[i]) for i in range(n)]
        out = {k: v for k, v in batch.items() if k not in RESULT_COLUMNS}
        out.update(_result_columns(ordered))
        return out


def _text(value):
    # numpy batches hold str, or None or NaN (an all-null Arrow column) for a missing text; anything
    # else goes to validate_pair as is, which reports it in the row
    value = _plain(value)
    return None if isinstance(value, float) and value != value else value


def _is_error(value):
    # an all-null error column reaches numpy as NaN, not None
    return isinstance(value, str)


def with_row_index(ds):
    """Adds ROW_INDEX (0, 1, ...) in input order, unless the dataset already has it.

    Ray 2.60 marks Dataset.zip deprecated (removal planned for 2.64), hence the pin to 2.60.*: it
    is that version's one way to number rows globally without a shuffle. zip pairs rows by
    position, which holds only with preserve_order, set here on both sides."""
    import ray.data

    ds.context.execution_options.preserve_order = True
    schema = ds.schema(fetch_if_missing=False)  # fetching would run the whole pipeline once more
    if schema is not None and ROW_INDEX in schema.names:
        return ds
    index = ray.data.range(ds.count()).rename_columns({"id": ROW_INDEX})
    index.context.execution_options.preserve_order = True
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Dataset\.zip` is deprecated")
        return ds.zip(index)


def score_dataset(ds, model=None, backend: str = "torch", device: Optional[str] = None, num_workers: int = 1,
                  gpus_per_worker: float = 0, cpus_per_worker: float = 1, batch_size: int = 8,
                  runtime_env: Optional[dict] = None, **options):
    """Scores a Ray Dataset of rows with `source` and `summary`; returns a lazy Dataset.

    Every input row comes back once, in input order, with its other columns untouched and the
    columns of RESULT_COLUMNS added (`pairs` as a JSON string). A row that cannot be scored keeps
    its place and carries an `error`; a row whose `error` column is already set upstream is not
    scored. A worker that dies is restarted by Ray and its batch retried. Keyword `options` are
    QualsScorer's stage options (`max_len=20`, ...).

    Each worker reserves `cpus_per_worker` CPUs (and its torch uses that many threads): leave the
    cluster at least one CPU beyond num_workers * cpus_per_worker for reading, or the readers wait
    on the workers forever."""
    from quals_fast.scorer import split_options

    split_options(options)  # unknown option names fail here, not inside every actor
    if device is None:
        device = "cuda" if gpus_per_worker else "cpu"
    import ray.data

    ds = with_row_index(ds)
    ds.context.execution_options.preserve_order = True

    # "A dead worker is replaced and its rows retried" rests on Ray Data's actor-pool defaults
    # (max_restarts=-1, max_task_retries=-1): a task lost with its actor reruns on the replacement.
    return ds.map_batches(
        _ScoringActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
        runtime_env=runtime_env,
        fn_constructor_kwargs=dict(model=None if model is None else str(model), backend=backend, device=device,
                                   batch_size=batch_size, threads=max(1, int(cpus_per_worker)), options=options))


def iter_scored_rows(ds, start: int = 0):
    """Rows of a scored dataset in order, checking that ROW_INDEX runs start, start+1, ...: a
    lost or repeated row raises instead of silently shifting the output."""
    expected = start
    for row in ds.iter_rows():
        if row[ROW_INDEX] != expected:
            raise RuntimeError("row %d came back where row %d was expected" % (row[ROW_INDEX], expected))
        expected += 1
        yield row


# --- `quals-fast score --ray` -------------------------------------------------------------


def add_cli_flags(parser):
    g = parser.add_argument_group("distributed (pip install quals-fast[ray])")
    g.add_argument("--ray", action="store_true", help="score on a Ray cluster (JSONL or Parquet --input)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    g.add_argument("--num-workers", type=int, default=1, help="scoring actors, each loading the model once")
    g.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs reserved per actor (default: 0)")
    g.add_argument("--cpus-per-worker", type=float, default=1,
                   help="CPUs reserved per actor, also its torch threads (default: 1)")


def _parse_jsonl_batch(batch):
    """`text` lines -> source, summary, id (as JSON text: ids may mix types), error, blank."""
    out = {ROW_INDEX: batch[ROW_INDEX], "source": [], "summary": [], "id_json": [], "error": [], "blank": []}
    for line in batch["text"]:
        rec, err = None, None
        blank = not line.strip()
        if not blank:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                err = "invalid JSON: %s" % exc
            else:
                if not isinstance(rec, dict):
                    err, rec = "a line must be a JSON object", None
                else:
                    missing = [k for k in ("source", "summary") if k not in rec]
                    if missing:
                        err = "missing field(s): %s" % ", ".join(missing)
        rec = rec or {}
        out["source"].append(_as_text(rec.get("source")))
        out["summary"].append(_as_text(rec.get("summary")))
        out["id_json"].append(json.dumps(rec["id"]) if "id" in rec else None)
        out["error"].append(err or _type_error(rec))
        out["blank"].append(blank)
    return out


def _as_text(value):
    return value if isinstance(value, str) else None


def _type_error(rec):
    for name in ("source", "summary"):
        if name in rec and not isinstance(rec[name], str):
            return "%s must be a string, got %s" % (name, type(rec[name]).__name__)
    return None


def read_input_dataset(path: str):
    """JSONL (one record a line, numbered like the file) or Parquet (numbered by row) -> a Dataset
    with ROW_INDEX, source, summary, id_json, error, blank."""
    import ray.data

    if path.endswith(".parquet") or os.path.isdir(path):
        ds = with_row_index(ray.data.read_parquet(path))

        def normalise(batch):
            n = len(batch[ROW_INDEX])
            ids = batch.get("id")
            missing = [c for c in ("source", "summary") if c not in batch]
            return {ROW_INDEX: batch[ROW_INDEX],
                    "source": batch.get("source", [None] * n), "summary": batch.get("summary", [None] * n),
                    "id_json": [None if ids is None else json.dumps(_text(ids[i])) for i in range(n)],
                    "error": ["missing field(s): %s" % ", ".join(missing) if missing else None] * n,
                    "blank": [False] * n}

        return ds.map_batches(normalise, batch_format="numpy")
    ds = with_row_index(ray.data.read_text(path, drop_empty_lines=False))
    return ds.map_batches(_parse_jsonl_batch, batch_format="numpy")


def _resume_point(path):
    """(`line` of the last complete record, records, failed records) of an existing output."""
    from quals_fast.score_cli import completed_lines

    last = total = failed = 0
    if completed_lines(path):
        with open(path, encoding="utf-8") as f:
            for text in f:
                rec = json.loads(text)
                last, total, failed = rec["line"], total + 1, failed + ("error" in rec)
    return last, total, failed


def run_cli(args, stage_options):
    """The body of `quals-fast score --ray`; writes the same records as the one-process path."""
    import sys

    try:
        import ray
        import ray.data
    except ImportError:
        raise SystemExit("quals-fast score --ray needs the ray extra: pip install 'quals-fast[ray]'") from None
    if not args.input:
        raise SystemExit("quals-fast score --ray: give --input FILE.jsonl or FILE.parquet")
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=False)
    if args.no_progress:
        ray.data.DataContext.get_current().enable_progress_bars = False
    reserved = args.num_workers * args.cpus_per_worker
    if ray.cluster_resources().get("CPU", 0) < reserved + 1:
        print("quals-fast score --ray: the cluster has %g CPUs and the workers reserve %g; without one more the "
              "input readers may wait forever (lower --cpus-per-worker)" % (ray.cluster_resources().get("CPU", 0),
                                                                           reserved), file=sys.stderr)
    start, total, failed = _resume_point(args.output) if args.resume else (0, 0, 0)
    ds = read_input_dataset(args.input)
    if start:
        from ray.data.expressions import col

        ds = ds.filter(expr=col(ROW_INDEX) >= start)
    scored = score_dataset(ds, model=args.model, backend=args.backend, device=args.device,
                           num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                           cpus_per_worker=args.cpus_per_worker,
                           batch_size=args.batch_size, **stage_options)
    with open(args.output, "a" if args.resume else "w", encoding="utf-8") as out:
        for row in iter_scored_rows(scored, start):
            if row["blank"]:
                continue
            total += 1
            rec = {"line": row[ROW_INDEX] + 1}
            if isinstance(row["id_json"], str):
                rec["id"] = json.loads(row["id_json"])
            if _is_error(row["error"]):
                failed += 1
                rec.update(error=row["error"], score=None)
                print("quals-fast score: line %d: %s" % (rec["line"], row["error"]), file=sys.stderr)
            else:
                rec.update({k: row[k] for k in RESULT_COLUMNS if k != "error"})
                rec["pairs"] = json.loads(rec["pairs"])
                rec = {k: _plain(v) for k, v in rec.items()}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
    if failed:
        print("quals-fast score: %d of %d inputs failed (see 'error' in %s)" % (failed, total, args.output),
              file=sys.stderr)
        return 1
    return 0


def _plain(value):
    # numpy scalars (and NaN for a null float) back to JSON values
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
