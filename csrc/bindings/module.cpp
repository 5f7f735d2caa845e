// The extension's single entry point: each binding file registers one Python-facing class
// or function family, so the core headers never see pybind11.
#include <pybind11/pybind11.h>

#include "bindings/registry.h"

#ifndef QUALS_FAST_SOURCE_HASH
#define QUALS_FAST_SOURCE_HASH "unknown"
#endif

PYBIND11_MODULE(_core, m) {
    m.doc() = "quals-fast compiled core: diverse beam search and QA-pair selection";
    m.attr("source_hash") = QUALS_FAST_SOURCE_HASH;
    quals::bindings::register_search(m);
    quals::bindings::register_selection(m);
}
