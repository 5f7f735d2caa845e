"""ONNX Runtime backend over a folder written by `quals-fast export` (see quals_fast.export).

Same contract and the same batching as the torch backend: an input's cross-attention keys/values
come out of the encoder graph once and are shared by its beams (the decoder graph folds the beams
into the query axis), the self-attention cache is gathered by the C++ search's `source_rows`
inside the decoder graph, and all targets of a source are scored against one encoding.

Every run goes through IO binding: the caches are OrtValues that stay where the execution provider
computes (device memory under CUDA/TensorRT) and are handed from one step to the next without a
round trip through NumPy; only the token ids in and the log-probs out cross to the host. CPU
runs the very same code with the caches in host memory. Importing this module needs neither
torch nor onnxruntime; constructing a backend needs onnxruntime.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from quals_fast.backends.base import ModelSpec, split_target_scores, teacher_forcing_arrays
from quals_fast.checkpoint import ONNX_MANIFEST

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class ProviderUnavailableError(RuntimeError):
    pass


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("the onnx backend needs ONNX Runtime: pip install 'quals-fast[onnx]' (CPU) or "
                          "'quals-fast[gpu]' (CUDA / TensorRT)") from exc
    return onnxruntime


def _provider_name(p):
    return p[0] if isinstance(p, (tuple, list)) else p


def resolve_providers(device="cpu", providers=None, available=None):
    """Execution providers for `device` ("cpu", "cuda", "cuda:N") or an explicit provider list
    (names or (name, options) pairs, in priority order, which then decides the device).

    Returns (providers, (device_type, device_id)): the list for InferenceSession and where the
    caches are bound. Raises ProviderUnavailableError naming the fix when the installed
    onnxruntime lacks a requested provider, instead of letting ONNX Runtime fall back to the CPU
    with only a warning."""
    if available is None:
        available = import_onnxruntime().get_available_providers()
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N', got %r" % (device,))
    device_id = int(index) if index else 0
    if providers is None:
        if kind == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
    providers = list(providers)
    if not providers:
        raise ValueError("providers must not be empty")
    missing = [_provider_name(p) for p in providers if _provider_name(p) not in available]
    if missing:
        hint = (" Install the GPU build: pip install 'quals-fast[gpu]' (onnxruntime-gpu replaces onnxruntime; "
                "uninstall onnxruntime first)." if any(m in GPU_PROVIDERS for m in missing) else "")
        raise ProviderUnavailableError("execution provider(s) %s not available in this onnxruntime build "
                                       "(available: %s).%s" % (", ".join(missing), ", ".join(available), hint))
    for p in providers:
        if _provider_name(p) in GPU_PROVIDERS:
            options = p[1] if isinstance(p, (tuple, list)) and len(p) > 1 else {}
            return providers, ("cuda", int(options.get("device_id", device_id)))
    if kind == "cuda":
        raise ValueError("device=%r but none of the providers %s runs on a GPU"
                         % (device, [_provider_name(p) for p in providers]))
    return providers, ("cpu", 0)


def spec_from_config(cfg: dict) -> ModelSpec:
    start = cfg.get("decoder_start_token_id")
    positions = cfg.get("max_position_embeddings", 1024)
    return ModelSpec(vocab_size=cfg["vocab_size"], pad_id=cfg["pad_token_id"], eos_id=cfg["eos_token_id"],
                     bos_id=cfg.get("bos_token_id"),
                     decoder_start_id=start if start is not None else cfg["eos_token_id"],
                     max_source_positions=positions, max_target_positions=positions,
                     source_bos=bool(cfg.get("qagen_source_bos", False)))


@dataclass
class _DecodeState:
    num_beams: int
    source_mask: np.ndarray   # (inputs, src_len) bool, True = attend
    cross: list               # OrtValues, io["encoder_out"] order, each (inputs, heads, src_len, head_dim)
    past: list                # OrtValues, past keys then values, each (rows, heads, step, head_dim)
    past_is_per_input: bool = False  # the cache holds one row per input, not per beam (after step 0)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, width: Optional[int] = None) -> np.ndarray:
    width = width or max(len(s) for s in seqs)
    out = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


class OnnxBackend:
    name = "onnx"

    def __init__(self, model_dir, device="cpu", providers=None, threads=None):
        ort = import_onnxruntime()
        self._ort = ort
        path = Path(model_dir)
        manifest_path = path / ONNX_MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError("%s is not an ONNX export (no %s); make one with: quals-fast export MODEL_DIR %s"
                                    % (path, ONNX_MANIFEST, path))
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        self.spec = spec_from_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
        self.providers, (self.device_type, self.device_id) = resolve_providers(device, providers)
        self.threads = int(threads) if threads is not None else (os.cpu_count() or 1)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        graphs = self.manifest["graphs"]
        self._sessions = {name: ort.InferenceSession(str(path / graphs[name]), sess_options=options,
                                                     providers=self.providers)
                          for name in ("encoder", "decoder", "score")}
        self.io = self.manifest["io"]
        self.num_layers = self.manifest["num_layers"]
        self.num_heads = self.manifest["num_heads"]
        self.head_dim = self.manifest["head_dim"]
        past_type = next(i.type for i in self._sessions["decoder"].get_inputs() if i.name == "past_key_0")
        self.cache_dtype = ORT_DTYPES[past_type]

    # ------------------------------------------------------------------ helpers
    def _ortvalue(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def _run(self, name, host_inputs, device_inputs, host_outputs, device_outputs):
        """One run of graph `name`. host_outputs: {name: preallocated array} written in place;
        device_outputs: names left where the provider computed them, returned as OrtValues."""
        session = self._sessions[name]
        binding = session.io_binding()
        # Held until the run is over: the binding may read the arrays' memory in place.
        host_inputs = {n: np.ascontiguousarray(a) for n, a in host_inputs.items()}
        for n, array in host_inputs.items():
            binding.bind_cpu_input(n, array)
        for n, value in device_inputs:
            binding.bind_ortvalue_input(n, value)
        for n, array in host_outputs.items():
            binding.bind_output(n, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        for n in device_outputs:
            binding.bind_output(n, self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[len(host_outputs):]

    def _encode(self, input_ids):
        ids = _pad(input_ids, self.spec.pad_id)
        cross = self._run("encoder", {"input_ids": ids}, [], {}, self.io["encoder_out"])
        return cross, ids != self.spec.pad_id

    # ------------------------------------------------------------------ protocol
    def encode(self, input_ids, num_beams):
        cross, mask = self._encode(input_ids)
        rows = len(input_ids) * num_beams
        empty = np.zeros((rows, self.num_heads, 0, self.head_dim), dtype=self.cache_dtype)
        past = [self._ortvalue(empty) for _ in range(2 * self.num_layers)]
        return _DecodeState(num_beams, mask, cross, past)

    def decoder_step(self, state, tokens, source_rows):
        K = state.num_beams
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if source_rows is None:
            per_input = tokens.reshape(-1, K)
            if K > 1 and np.all(per_input == per_input[:, :1]):
                # At the first step an input's beams are one and the same row: compute it once and
                # let the next step's gather (source_rows // K) fan the cache out to the beams.
                state.past_is_per_input = True
                return np.repeat(self._step(state, per_input[:, 0], np.arange(len(per_input))), K, axis=0)
            return self._step(state, tokens, np.arange(len(tokens), dtype=np.int64))
        beam_idx = np.ascontiguousarray(source_rows, dtype=np.int64)
        inputs_kept = beam_idx[::K] // K
        if len(inputs_kept) != state.source_mask.shape[0]:
            # Rare (an input has finished): the per-input keys/values go through the host once.
            state.source_mask = state.source_mask[inputs_kept]
            state.cross = [self._ortvalue(np.take(v.numpy(), inputs_kept, axis=0)) for v in state.cross]
        if state.past_is_per_input:
            beam_idx = beam_idx // K
            state.past_is_per_input = False
        return self._step(state, tokens, beam_idx)

    def _step(self, state, tokens, beam_idx):
        lprobs = np.empty((len(tokens), self.spec.vocab_size), dtype=np.float32)
        past_names = self.io["decoder_in"][-2 * self.num_layers:]
        state.past = self._run(
            "decoder", {"tokens": tokens, "beam_idx": np.ascontiguousarray(beam_idx, dtype=np.int64),
                        "source_mask": state.source_mask},
            list(zip(self.io["encoder_out"], state.cross)) + list(zip(past_names, state.past)),
            {"lprobs": lprobs}, self.io["decoder_out"][1:])
        return lprobs

    def score_targets(self, source_ids, targets) -> List[List[np.ndarray]]:
        cross, mask = self._encode(source_ids)
        b = len(source_ids)
        dec_in, gold = teacher_forcing_arrays(targets, self.spec.decoder_start_id, self.spec.pad_id)
        rows, width = dec_in.shape[1:]
        token_lp = np.empty((b * rows, width), dtype=np.float32)
        host_inputs = {"decoder_input_ids": dec_in.reshape(b * rows, width), "labels": gold.reshape(b * rows, width),
                       "source_mask": mask}
        self._run("score", host_inputs, list(zip(self.io["encoder_out"], cross)), {"token_logprobs": token_lp}, [])
        return split_target_scores(token_lp.reshape(b, rows, width), targets)
