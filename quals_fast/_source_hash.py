"""Fingerprint of the C++ sources, shared by setup.py (build time) and the loader (import time).

Kept free of package imports so that setup.py can load it by path before anything is built.
"""
import hashlib
import os

SOURCE_EXTENSIONS = (".h", ".hpp", ".cpp", ".cc")


def source_files(csrc_dir):
    found = []
    for root, dirs, files in os.walk(csrc_dir):
        dirs[:] = sorted(d for d in dirs if d != "generated")
        found.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(SOURCE_EXTENSIONS))
    return found


def source_hash(csrc_dir):
    """Hash of every hand-written C++ file under csrc_dir (generated tables are excluded:
    they are derived from the Python that builds them and checked separately)."""
    h = hashlib.sha256()
    for path in source_files(csrc_dir):
        h.update(os.path.relpath(path, csrc_dir).replace(os.sep, "/").encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]
