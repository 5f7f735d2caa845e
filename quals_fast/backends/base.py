"""The contract between the engine and a model runtime. The C++ search only ever sees the
float32 log-prob arrays that `decoder_step` returns and hands back row indices."""
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a checkpoint, read from its config (never hard-coded:
    fairseq-style BART uses pad 1 / eos 2, a BERT vocabulary uses pad 0 / eos 102)."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: Optional[int]
    decoder_start_id: int
    max_source_positions: int
    max_target_positions: int
    # Encoders warm-started from BERT read position 0 as [CLS]: a word there cannot be copied into
    # a question or answer, and a summary's first word is usually who did what. Such models put
    # bos before every input (config `qagen_source_bos`); fairseq QAGen (no_bos) does not.
    source_bos: bool = False

    def __post_init__(self):
        if self.source_bos and self.bos_id is None:
            raise ValueError("the config asks for a bos before every input (qagen_source_bos) but has no bos_token_id")


class Backend(Protocol):
    spec: ModelSpec

    def encode(self, input_ids: Sequence[Sequence[int]], num_beams: int) -> object:
        """Encode a batch of inputs once and return a decoding state for `num_beams` rows per input
        that share the input's encoder states."""

    def decoder_step(self, state: object, tokens: np.ndarray, source_rows: Optional[np.ndarray]) -> np.ndarray:
        """Reorder the state's caches to `source_rows` (None at the first step), append `tokens`
        (int64, one per row) and return float32 log-probs of shape (rows, vocab)."""

    def score_targets(self, source_ids: Sequence[Sequence[int]],
                      targets: Sequence[Sequence[Sequence[int]]]) -> List[List[np.ndarray]]:
        """Teacher-forced log-probs of each target token (EOS included) given its source: for
        source i, one float32 array per target in targets[i]."""


def teacher_forcing_arrays(targets: Sequence[Sequence[Sequence[int]]], start_id: int, pad_id: int):
    """Decoder inputs and gold tokens as fairseq's collater builds them for rescoring: the start
    token, then the target without its last token, right-padded. Shape (sources, rows, width):
    source i's targets occupy its first len(targets[i]) rows, so one encoding serves them all."""
    rows = max(len(ts) for ts in targets)
    width = max(len(t) for ts in targets for t in ts)
    dec_in = np.full((len(targets), rows, width), pad_id, dtype=np.int64)
    gold = np.full((len(targets), rows, width), pad_id, dtype=np.int64)
    for i, ts in enumerate(targets):
        for r, t in enumerate(ts):
            t = np.asarray(t, dtype=np.int64)
            dec_in[i, r, 0] = start_id
            dec_in[i, r, 1: len(t)] = t[:-1]
            gold[i, r, : len(t)] = t
    return dec_in, gold


def split_target_scores(token_lp: np.ndarray, targets) -> List[List[np.ndarray]]:
    """(sources, rows, width) per-position log-probs -> one array per real target."""
    return [[token_lp[i, r, : len(t)].copy() for r, t in enumerate(ts)] for i, ts in enumerate(targets)]
