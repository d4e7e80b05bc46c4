// Python bindings of the fixed-point kernels (registered into medfl._native through csrc/module.h).
// Python wrappers in medfl/native/ check arguments first; the checks here are the last line and
// raise ValueError with the values.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "fixed_point/fixed_point.h"
#include "module.h"

namespace py = pybind11;
namespace fp = medfl::fixed_point;
using medfl::native::data_of;
using medfl::native::ptr;

namespace {

void check_bits(int frac_bits, int ring_bits) {
  if (ring_bits != 32 && ring_bits != 64) throw py::value_error("ring_bits must be 32 or 64, got " + std::to_string(ring_bits));
  if (frac_bits < 0 || frac_bits > ring_bits - 2) {
    throw py::value_error("frac_bits must be in [0, " + std::to_string(ring_bits - 2) + "], got " +
                          std::to_string(frac_bits));
  }
}

void same_size(const py::array& a, const py::array& b, const char* what) {
  if (a.size() != b.size()) {
    throw py::value_error(std::string(what) + ": sizes differ (" + std::to_string(a.size()) + " vs " +
                          std::to_string(b.size()) + ")");
  }
}

py::tuple encode(py::array x, py::array out, int frac_bits, bool stochastic, uint64_t seed, uint64_t offset) {
  const float* xp = data_of<float>(x, "x", false);
  same_size(x, out, "encode");
  const int64_t n = x.size();
  fp::Status st{};
  if (out.dtype().equal(py::dtype::of<uint32_t>())) {
    check_bits(frac_bits, 32);
    uint32_t* op = data_of<uint32_t>(out, "out", true);
    py::gil_scoped_release nogil;
    st = fp::encode_cpu32(xp, op, n, frac_bits, stochastic, seed, offset);
  } else {
    check_bits(frac_bits, 64);
    uint64_t* op = data_of<uint64_t>(out, "out", true);
    py::gil_scoped_release nogil;
    st = fp::encode_cpu64(xp, op, n, frac_bits, stochastic, seed, offset);
  }
  return py::make_tuple(st.code, st.index);
}

void decode(py::array v, py::array out, int frac_bits) {
  float* op = data_of<float>(out, "out", true);
  same_size(v, out, "decode");
  const int64_t n = v.size();
  if (v.dtype().equal(py::dtype::of<uint32_t>())) {
    check_bits(frac_bits, 32);
    const uint32_t* vp = data_of<uint32_t>(v, "v", false);
    py::gil_scoped_release nogil;
    fp::decode_cpu32(vp, op, n, frac_bits);
  } else {
    check_bits(frac_bits, 64);
    const uint64_t* vp = data_of<uint64_t>(v, "v", false);
    py::gil_scoped_release nogil;
    fp::decode_cpu64(vp, op, n, frac_bits);
  }
}

void ring_sum(py::array rows, py::array out) {
  if (rows.ndim() != 2) throw py::value_error("rows must be 2-D (m, n), got ndim " + std::to_string(rows.ndim()));
  const int64_t m = rows.shape(0), n = rows.shape(1);
  if (out.size() != n) {
    throw py::value_error("out must have n = " + std::to_string(n) + " elements, got " + std::to_string(out.size()));
  }
  if (rows.dtype().equal(py::dtype::of<uint32_t>())) {
    const uint32_t* rp = data_of<uint32_t>(rows, "rows", false);
    uint32_t* op = data_of<uint32_t>(out, "out", true);
    py::gil_scoped_release nogil;
    fp::ring_sum_cpu32(rp, op, m, n);
  } else {
    const uint64_t* rp = data_of<uint64_t>(rows, "rows", false);
    uint64_t* op = data_of<uint64_t>(out, "out", true);
    py::gil_scoped_release nogil;
    fp::ring_sum_cpu64(rp, op, m, n);
  }
}

void ring_add(py::array acc, py::array v) {
  same_size(acc, v, "ring_add");
  const int64_t n = acc.size();
  if (acc.dtype().equal(py::dtype::of<uint32_t>())) {
    uint32_t* ap = data_of<uint32_t>(acc, "acc", true);
    const uint32_t* vp = data_of<uint32_t>(v, "v", false);
    py::gil_scoped_release nogil;
    fp::ring_add_cpu32(ap, vp, n);
  } else {
    uint64_t* ap = data_of<uint64_t>(acc, "acc", true);
    const uint64_t* vp = data_of<uint64_t>(v, "v", false);
    py::gil_scoped_release nogil;
    fp::ring_add_cpu64(ap, vp, n);
  }
}

void uniforms(py::array out, uint64_t seed, uint64_t offset) {
  double* op = data_of<double>(out, "out", true);
  const int64_t n = out.size();
  py::gil_scoped_release nogil;
  fp::uniforms_cpu(op, n, seed, offset);
}

}  // namespace

static medfl::native::Registration reg("fixed_point", [](py::module_& m) {
  m.def("encode", &encode, py::arg("x"), py::arg("out"), py::arg("frac_bits"), py::arg("stochastic"),
        py::arg("seed"), py::arg("offset"), "Fixed-point encode float32 -> uint32/uint64; returns (code, index)");
  m.def("decode", &decode, py::arg("v"), py::arg("out"), py::arg("frac_bits"));
  m.def("ring_sum", &ring_sum, py::arg("rows"), py::arg("out"));
  m.def("ring_add", &ring_add, py::arg("acc"), py::arg("v"));
  m.def("uniforms", &uniforms, py::arg("out"), py::arg("seed"), py::arg("offset"),
        "The stochastic-rounding uniforms u_offset.. (float64) into out");
#ifdef MEDFL_WITH_CUDA
  m.def("encode_cuda", [](uintptr_t x, uintptr_t out, int ring_bits, int64_t n, int frac_bits, bool stochastic,
                          uint64_t seed, uint64_t offset, uintptr_t stream) {
    check_bits(frac_bits, ring_bits);
    fp::Status st;
    {
      py::gil_scoped_release nogil;
      st = fp::encode_cuda(reinterpret_cast<const float*>(x), ptr(out), ring_bits, n, frac_bits, stochastic, seed,
                           offset, ptr(stream));
    }
    return py::make_tuple(st.code, st.index);
  });
  m.def("decode_cuda", [](uintptr_t v, int ring_bits, uintptr_t out, int64_t n, int frac_bits, uintptr_t stream) {
    check_bits(frac_bits, ring_bits);
    fp::decode_cuda(ptr(v), ring_bits, reinterpret_cast<float*>(out), n, frac_bits, ptr(stream));
  });
  m.def("ring_sum_cuda", [](uintptr_t rows, uintptr_t out, int ring_bits, int64_t m, int64_t n, uintptr_t stream) {
    fp::ring_sum_cuda(ptr(rows), ptr(out), ring_bits, m, n, ptr(stream));
  });
  m.def("ring_add_cuda", [](uintptr_t acc, uintptr_t v, int ring_bits, int64_t n, uintptr_t stream) {
    fp::ring_add_cuda(ptr(acc), ptr(v), ring_bits, n, ptr(stream));
  });
#endif
});
