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
