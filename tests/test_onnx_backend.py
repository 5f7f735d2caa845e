"""ONNX Runtime backend: exports of the oracle and tiny models give the torch backend's hypotheses
(tokens and order) and scores within 1e-4, pass the golden-vector checker, and fail clearly when a
provider is missing. int8 is measured, not held to parity."""
import json
import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quals-fast[onnx]')")

from quals_fast import QAGen, QualsScorer  # noqa: E402
from quals_fast.backends.onnx_backend import (OnnxBackend, ProviderUnavailableError,  # noqa: E402
                                              resolve_providers)
from quals_fast.checkpoint import ONNX_MANIFEST  # noqa: E402
from quals_fast.export import cached_export, export_onnx  # noqa: E402

TOL = 1e-4
ONE_THREAD = {"threads": 1}
GEN = dict(num_beams=12, num_groups=12, min_len=3, max_len=20)


@pytest.fixture(scope="module")
def oracle_export(oracle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "oracle"
    manifest = export_onnx(oracle_dir / "model", out, log=lambda *a: None)
    assert manifest["validation"]["max_abs_diff"] < TOL
    return out


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    export_onnx(tiny_model_dir, out, validate=False)
    return out


@pytest.fixture(scope="module")
def tiny_int8(tiny_model_dir, tmp_path_factory):
    from quals_fast.cli import main

    out = tmp_path_factory.mktemp("onnx") / "tiny-int8"
    assert main(["export", str(tiny_model_dir), str(out), "--int8", "--no-validate"]) == 0
    return out


def _pair(torch_dir, onnx_dir):
    return QAGen.load(torch_dir, backend="torch", threads=1), QAGen.load(onnx_dir, backend="onnx", **ONE_THREAD)


def _assert_same_hypotheses(want, got):
    assert len(want) == len(got)
    for hw, hg in zip(want, got):
        assert [h.tokens.tolist() for h in hw] == [h.tokens.tolist() for h in hg]
        for a, b in zip(hw, hg):
            np.testing.assert_allclose(b.positional_scores, a.positional_scores, atol=TOL, rtol=0)
            assert abs(a.score - b.score) <= TOL


def test_export_folder_is_self_contained(oracle_export, tiny_export, tiny_model_dir):
    manifest = json.loads((tiny_export / ONNX_MANIFEST).read_text())
    assert manifest["dtype"] == "float32" and manifest["quantization"] is None
    assert set(manifest["graphs"]) == {"encoder", "decoder", "score"}
    assert all((tiny_export / g).is_file() for g in manifest["graphs"].values())
    assert manifest["source_model"]["sha256"] and manifest["versions"]["onnxruntime"] == ort.__version__
    config = json.loads((tiny_export / "config.json").read_text())
    assert config["qagen_separator"] == json.loads((tiny_model_dir / "config.json").read_text())["qagen_separator"]
    assert not list(tiny_export.glob("*.safetensors"))
    tiny = QAGen.load(tiny_export, backend="onnx", **ONE_THREAD)
    assert tiny.tokenizer is not None and tiny.separator == config["qagen_separator"]
    # No tokenizer in the oracle model: the export still loads and serves ids.
    oracle = QAGen.load(oracle_export, backend="onnx", **ONE_THREAD)
    assert oracle.tokenizer is None
    assert oracle.score_ids([5, 6, 7, 2], [[8, 9, 2]])[0].positional_scores.shape == (3,)


def test_generate_parity_oracle(oracle_dir, oracle_export):
    torch_model, onnx_model = _pair(oracle_dir / "model", oracle_export)
    rng = np.random.default_rng(3)
    # Different lengths and a short max_len make inputs finish at different steps (cross-KV reselect).
    inputs = [list(rng.integers(4, 320, n)) + [2] for n in (6, 30, 14)]
    for kw in (dict(num_beams=60, num_groups=60, max_len=25), GEN):
        _assert_same_hypotheses(torch_model.generate_ids(inputs, **kw), onnx_model.generate_ids(inputs, **kw))


def test_generate_parity_tiny(tiny_model_dir, tiny_export):
    torch_model, onnx_model = _pair(tiny_model_dir, tiny_export)
    inputs = [torch_model.encode_text(t, 64)[0] for t in ("john smith was arrested in paris on monday",
                                                         "the storm killed ten people", "mary won")]
    _assert_same_hypotheses(torch_model.generate_ids(inputs, **GEN), onnx_model.generate_ids(inputs, **GEN))


def test_score_parity_batched(oracle_dir, oracle_export):
    torch_model, onnx_model = _pair(oracle_dir / "model", oracle_export)
    rng = np.random.default_rng(0)
    sources = [list(rng.integers(4, 320, n)) + [2] for n in (5, 40, 17)]
    targets = [[list(rng.integers(4, 320, m)) + [2] for m in lens] for lens in ([3, 9], [12], [1, 4, 30])]
    want = torch_model.backend.score_targets(sources, targets)
    got = onnx_model.backend.score_targets(sources, targets)
    for ws, gs in zip(want, got):
        for w, g in zip(ws, gs):
            assert g.dtype == np.float32 and g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


@pytest.mark.parametrize("args", [["all"], ["dbs", "--batched"]], ids=["all", "dbs-batched"])
def test_oracle_checker_passes_on_export(oracle_dir, oracle_export, args):
    cmd = [sys.executable, str(oracle_dir / "oracle_check.py"), args[0], "onnx", str(oracle_export)] + args[1:]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" not in proc.stdout


def test_scorer_on_export_matches_torch(tiny_model_dir, tiny_export):
    sources = ["the police said john smith was arrested in paris on monday", "the storm killed ten people in the city"]
    summaries = ["john smith was arrested in paris", "the storm killed two people"]
    want = QualsScorer(tiny_model_dir, max_len=20, backend_options={"threads": 1}).score(sources, summaries)
    got = QualsScorer(tiny_export, backend="onnx", max_len=20, backend_options=ONE_THREAD).score(sources, summaries)
    for a, b in zip(want, got):
        assert [(p.question, p.answer) for p in a.pairs] == [(p.question, p.answer) for p in b.pairs]
        assert (a.score is None) == (b.score is None)
        if a.score is not None:
            assert abs(a.score - b.score) <= TOL


def test_int8_export_runs_and_stays_close(tiny_model_dir, tiny_int8):
    manifest = json.loads((tiny_int8 / ONNX_MANIFEST).read_text())
    assert manifest["quantization"].startswith("int8")
    torch_model, int8_model = _pair(tiny_model_dir, tiny_int8)
    src = torch_model.encode_text("the police said john smith was arrested in paris on monday", 64)[0]
    targets = [h.tokens for h in torch_model.generate_ids([src], **GEN)[0][:8]]
    want = torch_model.score_ids(src, targets)
    got = int8_model.score_ids(src, targets)
    err = max(float(np.max(np.abs(a.positional_scores - b.positional_scores))) for a, b in zip(want, got))
    mean_err = float(np.mean([abs(a.score - b.score) for a, b in zip(want, got)]))
    print("int8 vs torch on the tiny model: max token log-prob error %.3g, mean |score| error %.3g" % (err, mean_err))
    # Dynamic int8 is lossy by design: this guards against a broken graph, not for parity.
    assert np.isfinite(err) and mean_err < 0.5


def test_cached_export_is_reused_until_the_weights_change(tiny_model_dir, tmp_path):
    from tiny_model import build_tiny_model

    logged = []
    first = cached_export(tiny_model_dir, tmp_path, validate=False, log=logged.append)
    assert logged and (first / ONNX_MANIFEST).is_file() and not list(tmp_path.glob("*.partial"))
    logged.clear()
    assert cached_export(tiny_model_dir, tmp_path, validate=False, log=logged.append) == first and not logged
    retrained = build_tiny_model(tmp_path / "retrained" / tiny_model_dir.name, seed=2)   # same folder name
    second = cached_export(retrained, tmp_path, validate=False, log=logged.append)
    assert second != first and logged and first.is_dir()


def test_fp16_export_is_validated_on_cpu(tiny_model_dir, tmp_path):
    # fp16 targets GPU providers; the CPU provider still runs it (with casts), which is enough to
    # check the conversion: caches in float16, log-probs kept in float32.
    manifest = export_onnx(tiny_model_dir, tmp_path / "fp16", fp16=True, log=lambda *a: None)
    assert manifest["dtype"] == "float16" and manifest["validation"]["ran"]
    assert manifest["validation"]["max_abs_diff"] < 0.1
    backend = OnnxBackend(tmp_path / "fp16", **ONE_THREAD)
    assert backend.cache_dtype == np.float16
    state = backend.encode([[5, 6, 2]], num_beams=2)
    assert backend.decoder_step(state, np.array([2, 2]), None).dtype == np.float32


def test_missing_provider_is_a_clear_error(oracle_export):
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ProviderUnavailableError, match=r"quals-fast\[gpu\]"):
        OnnxBackend(oracle_export, device="cuda")
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        OnnxBackend(oracle_export, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(ProviderUnavailableError, match="NoSuchExecutionProvider"):
        resolve_providers(providers=["NoSuchExecutionProvider"])


def test_provider_selection_and_cache_device():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cpu", available=gpu_build) == (["CPUExecutionProvider"], ("cpu", 0))
    providers, device = resolve_providers("cuda:1", available=gpu_build)
    assert providers == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert device == ("cuda", 1)
    trt = [("TensorrtExecutionProvider", {"device_id": 2, "trt_fp16_enable": True}), "CUDAExecutionProvider"]
    assert resolve_providers(providers=trt, available=gpu_build) == (trt, ("cuda", 2))
    with pytest.raises(ValueError, match="GPU"):
        resolve_providers("cuda", providers=["CPUExecutionProvider"], available=gpu_build)
    with pytest.raises(ValueError, match="device"):
        resolve_providers("tpu", available=gpu_build)


def test_caches_stay_bound_between_steps(oracle_export):
    # The IO-binding path every provider uses: caches come back as OrtValues on the cache device
    # and are fed to the next step as they are; only log-probs are host arrays.
    backend = OnnxBackend(oracle_export, **ONE_THREAD)
    state = backend.encode([[5, 6, 7, 2], [9, 2]], num_beams=3)
    assert all(isinstance(v, ort.OrtValue) and v.device_name().lower() == "cpu" for v in state.cross + state.past)
    tokens = np.full(6, backend.spec.decoder_start_id, dtype=np.int64)
    lprobs = backend.decoder_step(state, tokens, None)
    assert isinstance(lprobs, np.ndarray) and lprobs.shape == (6, backend.spec.vocab_size)
    lprobs = backend.decoder_step(state, np.arange(10, 16), np.array([2, 2, 0, 3, 5, 4]))
    assert state.past[0].shape() == [6, backend.num_heads, 2, backend.head_dim]
    # The second input finished: its keys/values are dropped with it.
    backend.decoder_step(state, np.arange(10, 13), np.array([1, 0, 0]))
    assert state.cross[0].shape()[0] == 1 and state.source_mask.shape == (1, 4)
    assert np.all(np.isfinite(lprobs))


def test_torch_folder_is_not_an_export(oracle_dir):
    with pytest.raises(FileNotFoundError, match="quals-fast export"):
        OnnxBackend(oracle_dir / "model")


def test_cli_rejects_int8_with_fp16(tiny_model_dir, tmp_path):
    from quals_fast.cli import main

    with pytest.raises(SystemExit):
        main(["export", str(tiny_model_dir), str(tmp_path / "x"), "--int8", "--fp16"])
