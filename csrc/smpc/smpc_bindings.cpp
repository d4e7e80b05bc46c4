// Python bindings of the encrypted-inference kernels (registered into medfl._native through csrc/module.h).
// medfl/native.py checks arguments first; the checks here are the last line and raise ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "module.h"
#include "smpc/smpc.h"

namespace py = pybind11;
using medfl::native::data_of;

namespace {

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void ring_matmul(py::array a, py::array b, py::array c, bool accumulate, bool force_portable) {
  if (a.ndim() != 2 || b.ndim() != 2 || c.ndim() != 2 || a.shape(1) != b.shape(0) || c.shape(0) != a.shape(0) ||
      c.shape(1) != b.shape(1))
    throw py::value_error("ring_matmul: need a (m, k), b (k, n), out (m, n); got " + shape_of(a) + ", " + shape_of(b) +
                          ", " + shape_of(c));
  const uint64_t* ap = data_of<uint64_t>(a, "a", false);
  const uint64_t* bp = data_of<uint64_t>(b, "b", false);
  uint64_t* cp = data_of<uint64_t>(c, "out", true);
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  py::gil_scoped_release nogil;
  medfl::smpc::ring_matmul_cpu(ap, bp, cp, m, k, n, accumulate, force_portable);
}

}  // namespace

static medfl::native::Registration reg("smpc", [](py::module_& m) {
  m.def("ring_matmul", &ring_matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("accumulate") = false,
        py::arg("force_portable") = false,
        "out (=|+=) a @ b mod 2^64 for C-contiguous uint64 matrices (AVX2 when the CPU has it).");
  m.def("smpc_impl", []() {
    py::dict d;
    d["ring_matmul"] = std::string(medfl::smpc::ring_matmul_impl());
    return d;
  });
});
