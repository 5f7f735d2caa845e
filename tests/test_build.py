"""The compiled core refuses to run stale, and says how to rebuild."""
import importlib

import pytest

import quals_fast._native as native


def test_stale_build_is_refused(monkeypatch):
    monkeypatch.setattr(native.core, "source_hash", "0000000000000000", raising=False)
    with pytest.raises(native.BuildError, match="stale") as info:
        native._check_fresh()
    assert "pip install -e . --no-build-isolation" in str(info.value)


def test_fresh_build_passes():
    native._check_fresh()
    assert importlib.import_module("quals_fast._core").source_hash == native.core.source_hash


def test_core_releases_clear_errors_for_bad_arrays():
    import numpy as np

    with pytest.raises(ValueError, match="3 dimensions"):
        native.core.diverse_beam_step(0, np.zeros((4, 5), np.float32), None, 1, 0.5)
    with pytest.raises(ValueError, match="prev_scores is required"):
        native.core.diverse_beam_step(1, np.zeros((1, 2, 8), np.float32), None, 1, 0.5)
