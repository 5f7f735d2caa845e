"""Builds the quals_fast._core extension (pybind11).

The Unicode case tables the C++ lower-casing uses are generated from the Python that runs
this build, so that the extension agrees with that interpreter's str.lower() exactly.
"""
import glob
import importlib.util
import os
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


source_hash = _load("_qf_source_hash", os.path.join(HERE, "quals_fast", "_source_hash.py")).source_hash
gen_tables = _load("_qf_gen_unicode", os.path.join(HERE, "tools", "gen_unicode_case.py"))

generated_dir = os.path.join(CSRC, "generated")
gen_tables.write_header(os.path.join(generated_dir, "unicode_case_tables.h"))

# Compile the sources in parallel (all cores unless QUALS_FAST_BUILD_JOBS says otherwise).
ParallelCompile("QUALS_FAST_BUILD_JOBS", default=0).install()

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "bindings", "*.cpp")))
extra_compile_args = ["-O3"] if sys.platform != "win32" else ["/O2"]

ext = Pybind11Extension(
    "quals_fast._core",
    sources,
    include_dirs=["csrc", generated_dir],
    cxx_std=17,
    define_macros=[("QUALS_FAST_SOURCE_HASH", '"%s"' % source_hash(CSRC))],
    extra_compile_args=extra_compile_args,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
