// Shared helpers for the pieces of medfl._native, and the registry each kernel family uses to add
// its functions to the module. A family lives in csrc/<family>/ with a <family>_bindings.cpp that
// defines its functions and registers them with
//   static medfl::native::Registration reg("secagg", [](pybind11::module_& m) { m.def(...); });
// bindings.cpp calls every registration (in name order) when the module is imported, so adding a
// family never touches bindings.cpp. CMakeLists.txt compiles every csrc/**/*.cpp (and *.cu when
// CUDA is on), so it is not edited either.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace medfl::native {

using RegisterFn = std::function<void(pybind11::module_&)>;

// Every registration made so far (function-local static, so static initialisation order is safe).
inline std::vector<std::pair<std::string, RegisterFn>>& registrations() {
  static std::vector<std::pair<std::string, RegisterFn>> all;
  return all;
}

struct Registration {
  Registration(std::string family, RegisterFn fn) { registrations().emplace_back(std::move(family), std::move(fn)); }
};

// The data pointer of a NumPy array after checking its dtype, C-contiguity and (if asked)
// writability; raises ValueError naming the argument otherwise.
template <typename T>
T* data_of(pybind11::array& a, const char* what, bool writable) {
  namespace py = pybind11;
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().equal(py::dtype::of<T>())) {
    throw py::value_error(std::string(what) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                          ", got " + std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    std::string strides;
    for (py::ssize_t d = 0; d < a.ndim(); ++d) strides += (d ? ", " : "") + std::to_string(a.strides(d));
    throw py::value_error(std::string(what) + ": array must be C-contiguous, got strides (" + strides + ")");
  }
  if (writable && !a.writeable()) throw py::value_error(std::string(what) + ": array is read-only");
  return static_cast<T*>(writable ? a.mutable_data() : const_cast<void*>(a.data()));
}

// A raw device pointer or stream handle passed from Python as an integer.
inline void* ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace medfl::native
