# Type stubs for the compiled core, quals_fast._core. Each binding file owns one section.

# --- selection ---
from collections.abc import Sequence

# Unicode version of the case tables (unicodedata.unidata_version of the Python that built them).
unicode_version: str
default_separator: str

def lower(text: str | bytes) -> str:
    """Python's str.lower(), computed by the C++ tables."""

def filter_verbatim(
    texts: Sequence[str | bytes], summary: str | bytes, sep: str | bytes = " strutConnector"
) -> list[tuple[int, str, str]]:
    """(index, question, answer) of the candidates whose answer occurs verbatim (case-folded) in the summary."""

def select_qa_pairs(
    texts: Sequence[str | bytes],
    unnormalized_scores: Sequence[float],
    summary: str | bytes,
    sep: str | bytes = " strutConnector",
    max_pairs: int = 10,
    strict_cap: bool = False,
) -> list[tuple[int, str, str]]:
    """(index, question, answer) of the kept QA pairs, in QUALS's round-robin order."""
# --- end selection ---

# --- search ---
import numpy as np
import numpy.typing as npt

# Hash of the C++ sources this build came from (checked against csrc/ on import).
source_hash: str

def diverse_beam_step(
    step: int,
    lprobs: npt.NDArray[np.float32],
    prev_scores: npt.NDArray[np.float32] | None,
    num_groups: int,
    diversity_strength: float,
    pad_id: int = -1,
    eos_id: int = -1,
    min_len: int = 0,
    max_len: int = ...,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """One pure search step over (batch, num_beams, vocab) log-probs -> (scores, tokens, beams)."""

class DiverseBeamSearch:
    def __init__(
        self,
        batch: int,
        vocab_size: int,
        num_beams: int,
        num_groups: int,
        diversity_strength: float,
        pad_id: int,
        eos_id: int,
        min_len: int,
        max_len: int,
        len_penalty: float = 1.0,
    ) -> None: ...
    def step(
        self, lprobs: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], bool]:
        """(source_rows, tokens, done) for the next decoder step."""
    def results(self, input: int) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], float]]: ...
    @property
    def step_index(self) -> int: ...
    @property
    def done(self) -> bool: ...
    @property
    def active_inputs(self) -> npt.NDArray[np.int64]: ...
# --- end search ---
