"""Reference pipelines: baselines and oracles for the engine, never on the fast path.

`quals_reference` is QUALS the original, straightforward way; `qags` is QAGS (Wang et al. 2020)."""
from quals_fast.reference.quals_reference import quals_reference

__all__ = ["quals_reference"]
