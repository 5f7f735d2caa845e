"""`quals-fast score`: QUALS over a JSONL file (or two line files), resumable.

Results are appended to the output one line per input, in input order, flushed after every
batch: an interrupted run keeps everything already scored and `--resume` continues after it."""
import argparse
import dataclasses
import json
import os
import sys
import typing

from quals_fast.backends import BACKENDS


def _stage_classes():
    from quals_fast.scorer import STAGE_OPTIONS

    return STAGE_OPTIONS


def _flag_type(f):
    kind = f.type
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def add_stage_flags(parser):
    """One flag per field of every stage options dataclass (field `max_len` -> `--max-len`)."""
    for cls in _stage_classes():
        group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0] or None)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = _flag_type(f)
            if kind is bool:
                group.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                                   help="(default: off)")
            else:
                group.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS,
                                   help="(default: %r)" % (f.default,))


def stage_options_from_args(args):
    names = {f.name for cls in _stage_classes() for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def register_cli(subparsers):
    p = subparsers.add_parser("score", help="score summaries against their sources",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="QAGen model folder (default: the embedded model)")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--input", help="JSONL file with fields 'source' and 'summary' (an 'id' is carried over)")
    src.add_argument("--sources", help="text file, one source per line (with --summaries)")
    src.add_argument("--summaries", help="text file, one summary per line (with --sources)")
    p.add_argument("--output", required=True, help="JSONL output, one line per input")
    p.add_argument("--resume", action="store_true", help="continue after the inputs already in --output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--batch-size", type=int, default=8, help="summaries decoded together (default: 8)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_stage_flags(p)
    from quals_fast.distributed import add_cli_flags

    add_cli_flags(p)
    p.set_defaults(func=run)
    return p


def read_inputs(args):
    """-> list of (line_number, record id or None, source, summary, error)."""
    if args.input:
        items = []
        with open(args.input, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    items.append((n, None, None, None, "invalid JSON: %s" % exc))
                    continue
                if not isinstance(rec, dict):
                    items.append((n, None, None, None, "a line must be a JSON object"))
                    continue
                missing = [k for k in ("source", "summary") if k not in rec]
                if missing:
                    items.append((n, rec.get("id"), None, None, "missing field(s): %s" % ", ".join(missing)))
                    continue
                items.append((n, rec.get("id"), rec["source"], rec["summary"], None))
        return items
    with open(args.sources, encoding="utf-8") as f:
        sources = f.read().splitlines()
    with open(args.summaries, encoding="utf-8") as f:
        summaries = f.read().splitlines()
    if len(sources) != len(summaries):
        raise SystemExit("quals-fast score: %s has %d lines but %s has %d"
                         % (args.sources, len(sources), args.summaries, len(summaries)))
    return [(n, None, s, m, None) for n, (s, m) in enumerate(zip(sources, summaries), 1)]


def completed_lines(path):
    """Number of complete records in an existing output; a torn last line is cut off."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "wb") as f:
            f.write(keep)
    return keep.count(b"\n")


def run(args):
    if bool(args.input) == bool(args.sources or args.summaries) or (not args.input and not (args.sources and args.summaries)):
        raise SystemExit("quals-fast score: give --input FILE.jsonl, or both --sources and --summaries")
    if os.path.exists(args.output) and not (args.resume or args.overwrite):
        raise SystemExit("quals-fast score: %s exists; pass --resume to continue it or --overwrite to replace it"
                         % args.output)
    if getattr(args, "ray", False):
        from quals_fast.distributed import run_cli

        return run_cli(args, stage_options_from_args(args))
    items = read_inputs(args)
    skip = completed_lines(args.output) if args.resume else 0
    if skip > len(items):
        raise SystemExit("quals-fast score: %s holds %d results but the input has only %d" % (args.output, skip, len(items)))

    from quals_fast.scorer import QualsScorer

    scorer = QualsScorer(args.model, backend=args.backend, device=args.device, **stage_options_from_args(args))
    todo = items[skip:]
    failed = sum(1 for it in items[:skip] if it[4])
    mode = "a" if args.resume else "w"
    with open(args.output, mode, encoding="utf-8") as out:
        results = scorer.iter_scores([it[2] for it in todo], [it[3] for it in todo], batch_size=args.batch_size,
                                     on_error="report", progress=not args.no_progress) if todo else []
        for (line, rid, _, _, parse_error), res in zip(todo, results):
            rec = {"line": line}
            if rid is not None:
                rec["id"] = rid
            error = parse_error or res.error
            if error:
                failed += 1
                rec["error"] = error
                rec["score"] = None
                print("quals-fast score: line %d: %s" % (line, error), file=sys.stderr)
            else:
                rec.update(res.to_dict())
                rec.pop("error")
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
    if failed:
        print("quals-fast score: %d of %d inputs failed (see 'error' in %s)" % (failed, len(items), args.output),
              file=sys.stderr)
        return 1
    return 0
