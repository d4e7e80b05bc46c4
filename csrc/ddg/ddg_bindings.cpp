// Python bindings of the discrete Gaussian noise kernel (registered into medfl._native through csrc/module.h).
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "ddg/ddg.h"
#include "module.h"

namespace py = pybind11;

namespace {

const uint8_t* key_of(const py::bytes& b) {
  std::string_view v(b);
  if (v.size() != 32) throw py::value_error("key: expected 32 bytes, got " + std::to_string(v.size()));
  return reinterpret_cast<const uint8_t*>(v.data());
}

void check_sigma(double sigma) {
  if (!(std::isfinite(sigma) && sigma >= 0.5 && sigma <= 1e12))
    throw py::value_error("sigma must be a finite number in [0.5, 1e12], got " + std::to_string(sigma));
}

void add_discrete_gaussian(py::array vec, double sigma, py::bytes key, int threads) {
  check_sigma(sigma);
  const uint8_t* k = key_of(key);
  const std::size_t n = static_cast<std::size_t>(vec.size());
  int rc;
  if (vec.dtype().equal(py::dtype::of<uint32_t>())) {
    uint32_t* v = medfl::native::data_of<uint32_t>(vec, "vec", true);
    py::gil_scoped_release release;
    rc = medfl::ddg::add_discrete_gaussian_cpu<uint32_t>(v, n, sigma, k, threads);
  } else if (vec.dtype().equal(py::dtype::of<uint64_t>())) {
    uint64_t* v = medfl::native::data_of<uint64_t>(vec, "vec", true);
    py::gil_scoped_release release;
    rc = medfl::ddg::add_discrete_gaussian_cpu<uint64_t>(v, n, sigma, k, threads);
  } else {
    throw py::value_error("vec: expected dtype uint32 or uint64, got " + std::string(py::str(vec.dtype())));
  }
  if (rc != 0) throw py::value_error("add_discrete_gaussian: a chunk ran out of candidates (sigma=" +
                                     std::to_string(sigma) + ")");
}

}  // namespace

static medfl::native::Registration reg("ddg", [](py::module_& m) {
  m.def("add_discrete_gaussian", &add_discrete_gaussian, py::arg("vec"), py::arg("sigma"), py::arg("key"),
        py::arg("threads"),
        "Add discrete Gaussian N_Z(0, sigma^2) samples (Canonne-Kamath-Steinke 2020, alg. 3, over ChaCha20) to "
        "a uint32/uint64 ring vector in place, wrapping.");
#ifdef MEDFL_WITH_CUDA
  m.def(
      "add_discrete_gaussian_cuda",
      [](uintptr_t vec, int ring_bits, uint64_t n, double sigma, py::bytes key, uintptr_t stream) {
        check_sigma(sigma);
        if (ring_bits != 32 && ring_bits != 64)
          throw py::value_error("add_discrete_gaussian_cuda: ring_bits must be 32 or 64, got " +
                                std::to_string(ring_bits));
        const uint8_t* k = key_of(key);
        py::gil_scoped_release release;
        medfl::ddg::add_discrete_gaussian_cuda(medfl::native::ptr(vec), ring_bits, n, sigma, k,
                                               medfl::native::ptr(stream));
      },
      py::arg("vec"), py::arg("ring_bits"), py::arg("n"), py::arg("sigma"), py::arg("key"), py::arg("stream"));
#endif
});
