// Python bindings of the per-sample clipping kernels (registered into medfl._native through
// csrc/module.h). medfl/native/clipping.py is the Python entry; it passes torch tensors as NumPy
// views (host) or device pointers with torch's current stream (CUDA).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "module.h"
#include "privacy/privacy.h"

namespace py = pybind11;

namespace {

bool is_f32(const py::array& a) { return a.dtype().equal(py::dtype::of<float>()); }
bool is_f64(const py::array& a) { return a.dtype().equal(py::dtype::of<double>()); }

void need_float(const py::array& a, const char* what) {
  if (!is_f32(a) && !is_f64(a))
    throw py::value_error(std::string(what) + ": expected float32 or float64, got " + std::string(py::str(a.dtype())));
}

void need_same(const py::array& a, const py::array& b, const char* what) {
  if (!a.dtype().equal(b.dtype()))
    throw py::value_error(std::string(what) + ": dtypes differ (" + std::string(py::str(a.dtype())) + " vs " +
                          std::string(py::str(b.dtype())) + ")");
}

void need_shape(const py::array& a, std::initializer_list<py::ssize_t> shape, const char* what) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t d = 0;
  std::string want;
  for (py::ssize_t s : shape) {
    if (ok && a.shape(d) != s) ok = false;
    want += (d ? ", " : "") + std::to_string(s);
    ++d;
  }
  if (!ok) {
    std::string got;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
    throw py::value_error(std::string(what) + ": expected shape (" + want + "), got (" + got + ")");
  }
}

void row_sqnorms(py::array x, py::array out, int threads) {
  need_float(x, "x");
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-D (rows, cols) array");
  need_shape(out, {x.shape(0)}, "out");
  double* o = medfl::native::data_of<double>(out, "out", true);
  const std::int64_t r = x.shape(0), c = x.shape(1);
  if (is_f32(x)) {
    const float* p = medfl::native::data_of<float>(x, "x", false);
    py::gil_scoped_release nogil;
    medfl::privacy::row_sqnorms_cpu(p, r, c, o, threads);
  } else {
    const double* p = medfl::native::data_of<double>(x, "x", false);
    py::gil_scoped_release nogil;
    medfl::privacy::row_sqnorms_cpu(p, r, c, o, threads);
  }
}

std::int64_t clip_factors(py::array sq, double max_norm, py::array norms, py::array factors) {
  if (!(max_norm > 0)) throw py::value_error("max_norm must be > 0");
  if (sq.ndim() != 2) throw py::value_error("sq: expected a 2-D (layers, batch) array");
  need_shape(norms, {sq.shape(1)}, "norms");
  need_shape(factors, {sq.shape(1)}, "factors");
  const double* s = medfl::native::data_of<double>(sq, "sq", false);
  double* n = medfl::native::data_of<double>(norms, "norms", true);
  double* f = medfl::native::data_of<double>(factors, "factors", true);
  return medfl::privacy::clip_factors_cpu(s, sq.shape(0), sq.shape(1), max_norm, n, f);
}

template <typename T>
void clipped_sum_t(py::array& x, py::array& c, py::array& out, bool accumulate, int threads) {
  const T* xp = medfl::native::data_of<T>(x, "x", false);
  const T* cp = medfl::native::data_of<T>(c, "c", false);
  T* op = medfl::native::data_of<T>(out, "out", true);
  const std::int64_t r = x.shape(0), n = x.shape(1);
  py::gil_scoped_release nogil;
  medfl::privacy::clipped_sum_cpu(xp, cp, r, n, op, accumulate, threads);
}

void clipped_sum(py::array x, py::array c, py::array out, bool accumulate, int threads) {
  need_float(x, "x");
  need_same(x, c, "c");
  need_same(x, out, "out");
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-D (rows, cols) array");
  need_shape(c, {x.shape(0)}, "c");
  need_shape(out, {x.shape(1)}, "out");
  if (is_f32(x))
    clipped_sum_t<float>(x, c, out, accumulate, threads);
  else
    clipped_sum_t<double>(x, c, out, accumulate, threads);
}

template <typename T>
void gn_t(py::array& a, py::array& g, std::int64_t groups, double eps, py::array& wg, py::array& bg, double* sq,
          int threads) {
  const T* ap = medfl::native::data_of<T>(a, "a", false);
  const T* gp = medfl::native::data_of<T>(g, "g", false);
  T* wp = medfl::native::data_of<T>(wg, "wg", true);
  T* bp = medfl::native::data_of<T>(bg, "bg", true);
  const std::int64_t b = a.shape(0), c = a.shape(1), s = a.shape(2);
  py::gil_scoped_release nogil;
  medfl::privacy::group_norm_affine_cpu(ap, gp, b, c, s, groups, eps, wp, bp, sq, threads);
}

void check_gn(const py::array& a, std::int64_t groups, double eps) {
  if (a.ndim() != 3) throw py::value_error("a: expected a 3-D (batch, channels, spatial) array");
  if (groups <= 0 || a.shape(1) % groups != 0)
    throw py::value_error("groups=" + std::to_string(groups) + " must be > 0 and divide channels=" +
                          std::to_string(a.shape(1)));
  if (a.shape(2) == 0) throw py::value_error("a: spatial size is 0");
  if (!(eps >= 0)) throw py::value_error("eps must be >= 0");
}

void group_norm_affine(py::array a, py::array g, std::int64_t groups, double eps, py::array wg, py::array bg,
                       int threads, std::optional<py::array> sq) {
  need_float(a, "a");
  need_same(a, g, "g");
  need_same(a, wg, "wg");
  need_same(a, bg, "bg");
  check_gn(a, groups, eps);
  need_shape(g, {a.shape(0), a.shape(1), a.shape(2)}, "g");
  need_shape(wg, {a.shape(0), a.shape(1)}, "wg");
  need_shape(bg, {a.shape(0), a.shape(1)}, "bg");
  double* sqp = nullptr;
  if (sq) {
    need_shape(*sq, {a.shape(0)}, "sq");
    sqp = medfl::native::data_of<double>(*sq, "sq", true);
  }
  if (is_f32(a))
    gn_t<float>(a, g, groups, eps, wg, bg, sqp, threads);
  else
    gn_t<double>(a, g, groups, eps, wg, bg, sqp, threads);
}

void gaussian_noise(py::bytes key, py::array out, double stddev, int threads) {
  const std::string k = key;
  if (k.size() != 32) throw py::value_error("key: expected 32 bytes, got " + std::to_string(k.size()));
  if (!(stddev >= 0) || !std::isfinite(stddev)) throw py::value_error("std must be finite and >= 0");
  need_float(out, "out");
  if (out.ndim() != 1) throw py::value_error("out: expected a 1-D array");
  const std::int64_t n = out.shape(0);
  const auto* kp = reinterpret_cast<const std::uint8_t*>(k.data());
  if (is_f32(out)) {
    float* o = medfl::native::data_of<float>(out, "out", true);
    py::gil_scoped_release nogil;
    medfl::privacy::gaussian_noise_cpu(kp, o, n, stddev, threads);
  } else {
    double* o = medfl::native::data_of<double>(out, "out", true);
    py::gil_scoped_release nogil;
    medfl::privacy::gaussian_noise_cpu(kp, o, n, stddev, threads);
  }
}

#ifdef MEDFL_WITH_CUDA
int dtype_code(const std::string& dtype) {
  if (dtype == "float32") return 0;
  if (dtype == "float64") return 1;
  throw py::value_error("expected float32 or float64, got " + dtype);
}
#endif

}  // namespace

static medfl::native::Registration reg("privacy", [](py::module_& m) {
  using medfl::native::ptr;
  m.def("dp_row_sqnorms", &row_sqnorms, py::arg("x"), py::arg("out"), py::arg("threads"),
        "out[b] = sum_j x[b, j]^2 in float64 for a C-contiguous float32/float64 (rows, cols) array.");
  m.def("dp_clip_factors", &clip_factors, py::arg("sq"), py::arg("max_norm"), py::arg("norms"), py::arg("factors"),
        "Per-sample norms and clip factors min(1, C/(norm+1e-6)) from (layers, batch) float64 squared norms; "
        "returns the number of non-finite norms.");
  m.def("dp_clipped_sum", &clipped_sum, py::arg("x"), py::arg("c"), py::arg("out"), py::arg("accumulate"),
        py::arg("threads"), "out (+)= c @ x for a (rows, cols) x and (rows,) c of one float dtype.");
  m.def("dp_group_norm_affine", &group_norm_affine, py::arg("a"), py::arg("g"), py::arg("groups"), py::arg("eps"),
        py::arg("wg"), py::arg("bg"), py::arg("threads"), py::arg("sq") = py::none(),
        "Per-sample GroupNorm weight/bias gradients (batch, channels) from input a and output gradient g "
        "(batch, channels, spatial); with sq (batch,) float64 also each sample's squared norm of both.");
  m.def("dp_gaussian_noise", &gaussian_noise, py::arg("key"), py::arg("out"), py::arg("std"), py::arg("threads"),
        "out[:] = std * N(0, 1) from the ChaCha20 stream of a 32-byte key (Box-Muller in double; "
        "medfl.privacy.noise._secure_normal is the reference), into a contiguous float32/float64 1-D array.");
#ifdef MEDFL_WITH_CUDA
  m.def(
      "dp_row_sqnorms_cuda",
      [](const std::string& dtype, uintptr_t x, std::int64_t rows, std::int64_t cols, uintptr_t out,
         uintptr_t stream) {
        const int code = dtype_code(dtype);
        medfl::privacy::row_sqnorms_cuda(code, ptr(x), rows, cols, static_cast<double*>(ptr(out)), ptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("rows"), py::arg("cols"), py::arg("out"), py::arg("stream"));
  m.def(
      "dp_clip_factors_cuda",
      [](uintptr_t sq, std::int64_t layers, std::int64_t batch, double max_norm, uintptr_t norms, uintptr_t factors,
         uintptr_t nonfinite, uintptr_t stream) {
        if (!(max_norm > 0)) throw py::value_error("max_norm must be > 0");
        medfl::privacy::clip_factors_cuda(static_cast<const double*>(ptr(sq)), layers, batch, max_norm,
                                          static_cast<double*>(ptr(norms)), static_cast<double*>(ptr(factors)),
                                          static_cast<std::int32_t*>(ptr(nonfinite)), ptr(stream));
      },
      py::arg("sq"), py::arg("layers"), py::arg("batch"), py::arg("max_norm"), py::arg("norms"), py::arg("factors"),
      py::arg("nonfinite"), py::arg("stream"));
  m.def(
      "dp_clipped_sum_cuda",
      [](const std::string& dtype, uintptr_t x, uintptr_t c, std::int64_t rows, std::int64_t cols, uintptr_t out,
         bool accumulate, uintptr_t stream) {
        const int code = dtype_code(dtype);
        medfl::privacy::clipped_sum_cuda(code, ptr(x), ptr(c), rows, cols, ptr(out), accumulate, ptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("c"), py::arg("rows"), py::arg("cols"), py::arg("out"),
      py::arg("accumulate"), py::arg("stream"));
  m.def(
      "dp_group_norm_affine_cuda",
      [](const std::string& dtype, uintptr_t a, uintptr_t g, std::int64_t batch, std::int64_t channels,
         std::int64_t spatial, std::int64_t groups, double eps, uintptr_t wg, uintptr_t bg, uintptr_t stream,
         uintptr_t sq) {
        const int code = dtype_code(dtype);
        if (groups <= 0 || channels % groups != 0 || spatial <= 0)
          throw py::value_error("dp_group_norm_affine_cuda: bad groups/channels/spatial");
        medfl::privacy::group_norm_affine_cuda(code, ptr(a), ptr(g), batch, channels, spatial, groups, eps, ptr(wg),
                                               ptr(bg), static_cast<double*>(ptr(sq)), ptr(stream));
      },
      py::arg("dtype"), py::arg("a"), py::arg("g"), py::arg("batch"), py::arg("channels"), py::arg("spatial"),
      py::arg("groups"), py::arg("eps"), py::arg("wg"), py::arg("bg"), py::arg("stream"), py::arg("sq") = 0);
#endif
});
