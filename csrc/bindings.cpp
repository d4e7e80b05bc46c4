// The one pybind11 module, medfl._native: the module itself (its doc, build_info and
// cuda_device_count) and a call to every topic's registration (csrc/module.h). Each topic's
// functions are defined in csrc/<topic>/<topic>_bindings.cpp; see module.h for the layout.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>

#include "module.h"
#ifdef MEDFL_WITH_CUDA
#include "common/cuda_device.h"
#endif

#ifndef MEDFL_VERSION
#define MEDFL_VERSION "0.0.0+unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "medfl native kernels (C++ with OpenMP; CUDA when built)";
  m.def("build_info", []() {
    py::dict d;
#ifdef MEDFL_WITH_CUDA
    d["cuda"] = true;
    d["cuda_arch"] = std::string(MEDFL_CUDA_ARCH);
#else
    d["cuda"] = false;
    d["cuda_arch"] = std::string("");
#endif
#ifdef MEDFL_WITH_OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    d["version"] = std::string(MEDFL_VERSION);
    return d;
  });
#ifdef MEDFL_WITH_CUDA
  m.def("cuda_device_count", []() { return medfl::common::cuda_device_count(); });
#else
  m.def("cuda_device_count", []() { return 0; });
#endif
  // Every topic (csrc/<topic>/), in name order so the module is the same every build.
  auto regs = medfl::native::registrations();
  std::sort(regs.begin(), regs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [topic, fn] : regs) fn(m);
}
