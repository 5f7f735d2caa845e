// Boundary checks shared by the bindings: arrays cross without copies, so dtype, rank and
// layout are verified here and reported as Python exceptions naming the argument.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace quals::bindings {

namespace py = pybind11;

template <typename T>
inline const char* dtype_name();
template <>
inline const char* dtype_name<float>() { return "float32"; }
template <>
inline const char* dtype_name<int64_t>() { return "int64"; }

// Checks `arr` is a `T` array of rank `ndim` whose last axis is contiguous and whose other axes
// are laid out densely over rows; returns the distance between consecutive rows in elements.
template <typename T>
int64_t check_rows(const py::array& arr, const char* name, py::ssize_t ndim) {
    if (!arr.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " must be a " + dtype_name<T>() + " array, got " +
                             std::string(py::str(arr.dtype())));
    if (arr.ndim() != ndim)
        throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got " +
                              std::to_string(arr.ndim()));
    const auto itemsize = static_cast<py::ssize_t>(sizeof(T));
    if (arr.shape(ndim - 1) > 1 && arr.strides(ndim - 1) != itemsize)
        throw py::value_error(std::string(name) + " must be contiguous along its last axis "
                              "(call numpy.ascontiguousarray or tensor.contiguous() first)");
    const int64_t row = ndim >= 2 ? static_cast<int64_t>(arr.strides(ndim - 2) / itemsize) : 1;
    // Middle axes must tile rows exactly so that rows can be addressed with one stride.
    for (py::ssize_t d = ndim - 2; d > 0; --d) {
        if (arr.strides(d - 1) != arr.strides(d) * arr.shape(d))
            throw py::value_error(std::string(name) + " must be C-contiguous over its leading axes");
    }
    if (ndim >= 2 && arr.shape(ndim - 2) > 1 && row < arr.shape(ndim - 1))
        throw py::value_error(std::string(name) + " has overlapping rows");
    return row;
}

}  // namespace quals::bindings
