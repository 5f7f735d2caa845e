"""Loads the compiled core and refuses a missing or stale build with the command that fixes it."""
import os

from quals_fast._source_hash import source_hash

REBUILD = "pip install -e . --no-build-isolation  (or: python setup.py build_ext --inplace)"


class BuildError(ImportError):
    pass


try:
    from quals_fast import _core as core
except ImportError as exc:  # pragma: no cover - exercised by users without a build
    raise BuildError(
        "quals_fast's compiled core (quals_fast._core) is not built or cannot be loaded (%s). "
        "From the repository root run:\n    %s" % (exc, REBUILD)
    ) from exc


def _check_fresh():
    # Only a source checkout has csrc/ beside the package; an installed wheel is fresh by construction.
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isdir(csrc) or os.environ.get("QUALS_FAST_SKIP_STALE_CHECK") == "1":
        return
    built, current = core.source_hash, source_hash(csrc)
    if built != current:
        raise BuildError(
            "quals_fast._core is stale: it was built from C++ sources %s but csrc/ now hashes to %s. "
            "Rebuild with:\n    %s" % (built, current, REBUILD)
        )


_check_fresh()
