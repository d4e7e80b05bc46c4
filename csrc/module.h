// The layout of csrc/ (one pybind11 module, medfl._native, built by CMakeLists.txt from every
// csrc/**/*.cpp, and every csrc/**/*.cu when CUDA is on):
//   bindings.cpp     the module: its doc, build_info, cuda_device_count, and every topic's registration
//   module.h         this file: the registry below and the argument helpers every bindings file uses
//   common/          pieces used by more than one topic; topics include these, not each other's,
//                    except secagg -> fixed_point/fixed_point.h (its fused quantize + mask calls
//                    the fixed-point encoder and follows its rounding rule)
//     chacha20.h, chacha20_cpu.cpp, chacha20_cuda.cu   ChaCha20 (RFC 8439): state, CPU tiles, keystreams
//     chacha20.cuh   the device block function
//     cuda_check.cuh the CUDA error check and the grid size of a grid-stride loop
//     cuda_device.h, cuda_device.cu   cuda_device_count
//   <topic>/         fixed_point, privacy, secagg, smpc: <topic>.h (the kernels and their exact
//                    semantics), CPU and CUDA sources, and <topic>_bindings.cpp
// Each <topic>_bindings.cpp defines its Python functions and registers them with
//   static medfl::native::Registration reg("<topic>", [](pybind11::module_& m) { m.def(...); });
// bindings.cpp calls every registration (in name order) when the module is imported, so adding a
// topic touches neither bindings.cpp nor CMakeLists.txt. medfl/_native.pyi types the functions.
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
