"""A backend whose 'model' is a deterministic random table (quals_fast.search_reference), so that
the C++ search can be compared with the NumPy reference without any neural network."""
from dataclasses import dataclass

import numpy as np

from quals_fast.backends.base import ModelSpec


class MemoStepFn:
    """Caches rows by (input, prefix) so that the reference and the engine, which ask for the same
    prefixes, pay for each row once."""

    def __init__(self, step_fn):
        self.step_fn = step_fn
        self.cache = {}

    def __call__(self, active_inputs, prefixes):
        beams = len(prefixes) // len(active_inputs)
        out = []
        for r, prefix in enumerate(prefixes):
            key = (int(active_inputs[r // beams]), prefix.tobytes())
            row = self.cache.get(key)
            if row is None:
                row = self.step_fn(np.array([key[0]]), prefix[None, :])[0]
                self.cache[key] = row
            out.append(row)
        return np.stack(out).astype(np.float32)


@dataclass
class _State:
    num_beams: int
    active: np.ndarray
    prefixes: np.ndarray


class TableBackend:
    def __init__(self, step_fn, vocab_size, pad_id=1, eos_id=2, start_id=2, max_positions=1024):
        self.step_fn = step_fn
        self.spec = ModelSpec(vocab_size, pad_id, eos_id, 0, start_id, max_positions, max_positions)

    def encode(self, input_ids, num_beams):
        n = len(input_ids)
        return _State(num_beams, np.arange(n), np.full((n * num_beams, 1), self.spec.decoder_start_id, np.int64))

    def decoder_step(self, state, tokens, source_rows):
        if source_rows is not None:
            state.active = state.active[source_rows[:: state.num_beams] // state.num_beams]
            state.prefixes = np.concatenate([state.prefixes[source_rows], tokens[:, None]], axis=1)
        return self.step_fn(state.active, state.prefixes)
