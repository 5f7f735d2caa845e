#pragma once
#include <pybind11/pybind11.h>

namespace quals::bindings {
void register_search(pybind11::module_& m);
void register_selection(pybind11::module_& m);
}  // namespace quals::bindings
