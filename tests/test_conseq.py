"""CONSEQ: contrastive-set construction, the losses, the in-loop reward, and `quals-fast conseq` end to end."""
import json
import math

import pytest
import torch

from quals_fast.cli import main
from quals_fast.training.conseq import (EMPTY, QualsReward, build_contrastive_set, conseq_loss, pick_negative,
                                        read_jsonl, unlikelihood_loss)


def kept(refs, samples, **kw):
    return [(e.doc, e.negative_index) for e in build_contrastive_set(refs, samples, **kw)]


# ------------------------------------------------------------------ set construction
def test_ratios_count_over_all_documents():
    # negatives (lowest sample per doc): d0 -3, d1 -1, d2 -5, d3 -2, d4 -0.5
    samples = [[-1, -3], [-1, 0], [-5, -2], [-2, -2], [-0.5, 0]]
    refs = [-0.1, -0.2, -0.3, -0.4, -0.5]
    # k = round(0.3 * 5) = 2: lowest negatives {d2, d0}; highest refs {d0, d1}; both: d0.
    assert kept(refs, samples) == [(0, 1)]
    # 0.5 * 5 = 2.5 rounds half to even -> 2, as the reference's round().
    assert kept(refs, samples, neg_ratio=0.5, pos_ratio=0.5) == [(0, 1)]
    # 0.7 * 5 = 3.5 -> 4: negatives {d2, d0, d3, d1}, refs {d0, d1, d2, d3}.
    assert kept(refs, samples, neg_ratio=0.7, pos_ratio=0.7) == [(0, 1), (1, 0), (2, 0), (3, 0)]
    assert kept(refs, samples, neg_ratio=1.0, pos_ratio=None) == [(0, 1), (1, 0), (2, 0), (3, 0), (4, 0)]


def test_ties_go_to_earlier_documents_and_samples():
    samples = [[-1.0], [-2.0, -2.0], [-2.0], [-2.0]]
    refs = [0.0, 0.0, 0.0, 0.0]
    # three negatives tie at -2 for k = round(0.5 * 4) = 2 places: the first two documents win,
    # and inside d1 the first of its two tied samples.
    assert kept(refs, samples, neg_ratio=0.5, pos_ratio=1.0) == [(1, 0), (2, 0)]
    # ground truths all tie: the first round(0.5 * 4) = 2 documents pass that filter.
    assert kept(refs, samples, neg_ratio=1.0, pos_ratio=0.5) == [(0, 0), (1, 0)]


def test_documents_without_qa_pairs():
    assert pick_negative([None, -1.0, None]) == (1, -1.0)
    assert pick_negative([None, -1.0], no_pair="lowest") == (0, -1e5)
    assert pick_negative([None, None]) is None
    assert pick_negative([EMPTY, None], no_pair="lowest") == (1, -1e5)
    assert pick_negative([EMPTY, -1e5]) is None         # the reference's sentinel is no score either
    samples = [[None, None], [-1.0], [-2.0], [-3.0]]
    # d0 has no negative: it ranks after all (k = round(0.6 * 4) = 2 -> d3, d2) and is never kept.
    assert kept([0.0] * 4, samples, neg_ratio=0.6, pos_ratio=1.0) == [(2, 0), (3, 0)]
    assert kept([0.0] * 4, samples, neg_ratio=1.0, pos_ratio=1.0) == [(1, 0), (2, 0), (3, 0)]
    # With no_pair="lowest" d0's no-pair sample is the lowest negative of all.
    assert kept([0.0] * 4, samples, neg_ratio=0.25, pos_ratio=1.0, no_pair="lowest") == [(0, 0)]
    # A ground truth with no pair (None or -1e5) ranks after every scored one.
    refs = [None, -1e5, -9.0, -8.0]
    assert kept(refs, [[-1.0]] * 4, neg_ratio=1.0, pos_ratio=0.5) == [(2, 0), (3, 0)]
    assert kept(refs, [[-1.0]] * 4, neg_ratio=1.0, pos_ratio=1.0) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    with pytest.raises(ValueError):
        build_contrastive_set([0.0], [[0.0]], neg_ratio=0.0)


# ------------------------------------------------------------------ losses
def direct_loss(logits, labels, pad_id, eps, negative):
    """Loop-level float64 restatement of the issue's formula."""
    total = 0.0
    p = torch.softmax(logits.double(), dim=-1)
    V = logits.size(-1)
    for b in range(labels.size(0)):
        for t in range(labels.size(1)):
            y = int(labels[b, t])
            if y == pad_id:
                continue
            row = p[b, t]
            terms = [-math.log(max(1.0 - float(row[v]), 1e-20)) if negative else -math.log(float(row[v]))
                     for v in range(V)]
            total += (1 - eps) * terms[y] + eps / V * sum(terms)
    return total


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g) * 3
    labels = torch.tensor([[3, 1, 6, 0], [2, 0, 0, 0]])  # 0 is the pad
    neg_logits = torch.randn(2, 3, 7, generator=g) * 3
    neg_labels = torch.tensor([[5, 5, 0], [1, 4, 2]])
    return logits, labels, neg_logits, neg_labels


def test_unlikelihood_matches_direct_computation(batch):
    logits, labels, _, _ = batch
    assert unlikelihood_loss(logits, labels, 0).item() == pytest.approx(direct_loss(logits, labels, 0, 0.0, True), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_conseq_loss_matches_direct_computation(batch, eps):
    logits, labels, neg_logits, neg_labels = batch
    want = direct_loss(logits, labels, 0, eps, False) + direct_loss(neg_logits, neg_labels, 0, eps, True)
    got = conseq_loss(logits, labels, neg_logits, neg_labels, pad_id=0, label_smoothing=eps)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_gradient_flows_through_unlikelihood():
    logits = torch.randn(1, 1, 5, dtype=torch.float64, requires_grad=True)
    unlikelihood_loss(logits, torch.tensor([[2]]), pad_id=0).backward()
    p = torch.softmax(logits.detach(), -1)[0, 0]
    # d/dz_y -log(1 - p_y) = p_y;  d/dz_v = -p_y p_v / (1 - p_y) for v != y
    want = -p[2] * p / (1 - p[2])
    want[2] = p[2]
    assert torch.allclose(logits.grad[0, 0], want, atol=1e-6)
    padded = torch.randn(1, 2, 5, requires_grad=True)
    unlikelihood_loss(padded, torch.tensor([[2, 0]]), pad_id=0).backward()
    assert padded.grad[0, 1].abs().sum() == 0 and padded.grad[0, 0].abs().sum() > 0


# ------------------------------------------------------------------ in-loop reward
SOURCE = "the police said john smith was arrested in paris on monday"
DOCS = [
    {"id": "a", "source": SOURCE, "summary": "john smith was arrested in paris"},
    {"id": "b", "source": "mary won the game in london by two", "summary": "mary won the game in london"},
    {"id": "c", "source": "the bank in berlin closed for ten years", "summary": "the bank in berlin closed"},
]


def test_reward_tensor(tiny_model_dir):
    reward = QualsReward(tiny_model_dir, device="cpu", batch_size=2, max_len=12)
    r = reward([SOURCE] * 3, ["john smith was arrested", "mary lost the match in berlin", "the of to"])
    assert r.shape == (3,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    has = reward.last_has_pairs
    assert has.any()
    for value, ok, res in zip(r.tolist(), has.tolist(), reward.last_results):
        assert value == pytest.approx(res.score if ok else min(x.score for x in reward.last_results if x.score is not None))
    assert reward.last_seconds > 0
    fixed = QualsReward(tiny_model_dir, no_pair_reward=-7.0, max_len=12, qagen=reward.scorer.qagen)
    [value] = fixed([SOURCE], ["the of to in"]).tolist()
    [res] = fixed.last_results
    assert value == (pytest.approx(res.score) if res.score is not None else -7.0)


# ------------------------------------------------------------------ end to end
def conseq(data, model, out, *extra):
    return main(["conseq", "--data", str(data), "--summarizer", str(model), "--qagen", str(model), "--output", str(out),
                 "--no-progress", "--num-samples", "3", "--sample-min-len", "2", "--sample-max-len", "6",
                 "--sample-batch-size", "1", "--max-len", "12", "--neg-ratio", "1.0", "--pos-ratio", "1.0",
                 "--no-pair", "lowest", "--epochs", "1", "--batch-size", "2", "--save-every", "1",
                 "--max-source-len", "64", *extra])


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


def test_end_to_end_and_resume(tmp_path, tiny_model_dir, data):
    run = tmp_path / "run"
    assert conseq(data, tiny_model_dir, run) == 0
    samples, scores = read_jsonl(run / "samples.jsonl"), read_jsonl(run / "scores.jsonl")
    contrastive = read_jsonl(run / "contrastive.jsonl")
    assert [r["doc"] for r in samples] == [0, 1, 2] and all(len(r["samples"]) == 3 for r in samples)
    assert [r["id"] for r in scores] == ["a", "b", "c"] and all(r["metric"] == "quals" for r in scores)
    assert any(s is not None for r in scores for s in [r["reference"]] + r["samples"])
    assert contrastive and all(c["positive"] == DOCS[c["doc"]]["summary"] for c in contrastive)
    for c in contrastive:
        assert c["negative"] == samples[c["doc"]]["samples"][c["negative_index"]]
    assert (run / "model" / "conseq_done.json").is_file()
    steps = json.loads((run / "model" / "conseq_done.json").read_text())["steps"]
    assert (run / "checkpoints" / ("step-%d" % steps)).is_dir()

    # An interrupted run: one sample line and a torn one, no scores, training stopped after step 1.
    lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
    (run / "samples.jsonl").write_text(lines[0] + lines[1][:15])
    for f in ("scores.jsonl", "contrastive.jsonl"):
        (run / f).unlink()
    final = {k: v.clone() for k, v in _weights(run / "model").items()}
    import shutil

    shutil.rmtree(run / "model")
    for step in range(2, steps + 1):
        shutil.rmtree(run / "checkpoints" / ("step-%d" % step), ignore_errors=True)
    with pytest.raises(SystemExit, match="--resume"):
        conseq(data, tiny_model_dir, run)
    assert conseq(data, tiny_model_dir, run, "--resume") == 0
    assert read_jsonl(run / "samples.jsonl") == samples       # same seeds: the same samples
    assert read_jsonl(run / "scores.jsonl") == scores
    assert read_jsonl(run / "contrastive.jsonl") == contrastive
    resumed = _weights(run / "model")
    assert all(torch.allclose(final[k], resumed[k], atol=1e-6) for k in final)
    # Checkpoints of one contrastive set never continue on another.
    shutil.rmtree(run / "model")
    (run / "contrastive.jsonl").write_text(json.dumps({**contrastive[0], "negative": "the of to"}) + "\n")
    with pytest.raises(SystemExit, match="other examples"):
        conseq(data, tiny_model_dir, run, "--resume", "--stages", "train")


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_shards_and_rouge_baseline(tmp_path, tiny_model_dir, data):
    merged = tmp_path / "merged"
    merged.mkdir()
    for i in (0, 1):
        shard = tmp_path / ("shard%d" % i)
        assert conseq(data, tiny_model_dir, shard, "--metric", "rouge", "--stages", "sample,score", "--shard", "%d/2" % i) == 0
        for f in ("samples.jsonl", "scores.jsonl"):
            with open(merged / f, "a") as out:
                out.write((shard / f).read_text())
    assert conseq(data, tiny_model_dir, merged, "--metric", "rouge", "--stages", "build", "--neg-ratio", "0.7") == 0
    samples = {r["doc"]: r["samples"] for r in read_jsonl(merged / "samples.jsonl")}
    scores = {r["doc"]: r for r in read_jsonl(merged / "scores.jsonl")}
    assert sorted(samples) == [0, 1, 2] and all(scores[d]["reference"] is None for d in scores)
    from quals_fast.training.conseq import rouge_ensemble

    for d, texts in samples.items():
        want = [v if t.strip() else None for t, v in zip(texts, rouge_ensemble([DOCS[d]["summary"]] * 3, texts))]
        assert scores[d]["samples"] == pytest.approx(want)
    # k = round(0.7 * 3) = 2 documents, the ground-truth filter off.
    assert len(read_jsonl(merged / "contrastive.jsonl")) == 2
    lone = tmp_path / "shard0"   # one shard alone cannot be built: it lacks the other's documents
    with pytest.raises(SystemExit, match="lacks 1 of 3 documents"):
        conseq(data, tiny_model_dir, lone, "--metric", "rouge", "--stages", "build")
    # sharded sampling draws what one unsharded run draws
    whole = tmp_path / "whole"
    assert conseq(data, tiny_model_dir, whole, "--metric", "rouge", "--stages", "sample") == 0
    assert {r["doc"]: r["samples"] for r in read_jsonl(whole / "samples.jsonl")} == samples


def test_help_documents_the_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["conseq", "--help"])
    text = capsys.readouterr().out
    for needle in ("LOWEST", "--neg-ratio", "--pos-ratio", "unlikelihood", "--metric", "--resume", "--shard", "3e-6"):
        assert needle in text


def test_score_stage_onnx_backend_matches_torch(tmp_path, tiny_model_dir, data):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quals-fast[onnx]')")
    from quals_fast.export import export_onnx

    onnx_dir = tmp_path / "onnx"
    export_onnx(tiny_model_dir, onnx_dir, validate=False)
    torch_run, onnx_run = tmp_path / "torch", tmp_path / "onnx-run"
    assert conseq(data, tiny_model_dir, torch_run, "--stages", "sample,score") == 0
    onnx_run.mkdir()
    (onnx_run / "samples.jsonl").write_text((torch_run / "samples.jsonl").read_text())
    assert conseq(data, tiny_model_dir, onnx_run, "--stages", "score", "--resume",
                  "--backend", "onnx", "--qagen", str(onnx_dir)) == 0
    expected, got = read_jsonl(torch_run / "scores.jsonl"), read_jsonl(onnx_run / "scores.jsonl")
    assert [r["doc"] for r in got] == [r["doc"] for r in expected]
    for e, g in zip(expected, got):
        for x, y in zip([e["reference"]] + e["samples"], [g["reference"]] + g["samples"]):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4)
