// Python bindings of the encrypted-inference kernels (registered into medfl._native through csrc/module.h).
// medfl/native/ checks arguments first; the checks here are the last line and raise ValueError.
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

medfl::smpc::AesImpl aes_choice(const std::string& name) {
  using medfl::smpc::AesImpl;
  const AesImpl impl = name == "auto"       ? AesImpl::kAuto
                       : name == "portable" ? AesImpl::kPortable
                       : name == "aesni"    ? AesImpl::kAesni
                       : name == "vaes"     ? AesImpl::kVaes
                                            : throw py::value_error("aes must be auto, portable, aesni or vaes, got '" +
                                                                    name + "'");
  if (!medfl::smpc::aes_available(impl))
    throw py::value_error("aes='" + name + "' but this CPU lacks those instructions; use aes='auto'");
  return impl;
}

void check_dcf_shape(int bits, int payload) {
  if (bits < 1 || bits > 64) throw py::value_error("dcf: bits must be in [1, 64], got " + std::to_string(bits));
  if (payload != 1 && payload != 2)
    throw py::value_error("dcf: payload must be 1 or 2 words, got " + std::to_string(payload));
}

void expect_size(const py::array& a, int64_t want, const char* what) {
  if (a.size() != want)
    throw py::value_error(std::string("dcf: ") + what + " has " + std::to_string(a.size()) + " elements " +
                          shape_of(a) + ", expected " + std::to_string(want));
}

void dcf_eval(int party, py::array seed, py::array s_cw, py::array v_cw, py::array t_cw, py::array final_cw,
              py::array x, py::array out, int bits, int payload, const std::string& aes) {
  const auto impl = aes_choice(aes);
  if (party != 0 && party != 1) throw py::value_error("dcf_eval: party must be 0 or 1, got " + std::to_string(party));
  check_dcf_shape(bits, payload);
  const int64_t n = x.size();
  expect_size(seed, 2 * n, "seed");
  expect_size(s_cw, 2 * n * bits, "s_cw");
  expect_size(v_cw, payload * n * bits, "v_cw");
  expect_size(t_cw, 2 * n * bits, "t_cw");
  expect_size(final_cw, payload * n, "final");
  expect_size(out, payload * n, "out");
  medfl::smpc::DcfKeys key{data_of<uint64_t>(seed, "seed", false), data_of<uint64_t>(s_cw, "s_cw", false),
                           data_of<uint64_t>(v_cw, "v_cw", false), data_of<uint8_t>(t_cw, "t_cw", false),
                           data_of<uint64_t>(final_cw, "final", false)};
  const uint64_t* xp = data_of<uint64_t>(x, "x", false);
  uint64_t* op = data_of<uint64_t>(out, "out", true);
  py::gil_scoped_release nogil;
  medfl::smpc::dcf_eval_cpu(party, key, xp, op, n, bits, payload, impl);
}

void dcf_gen(py::array alpha, py::array beta, py::array roots, py::array s_cw, py::array v_cw, py::array t_cw,
             py::array final_cw, int bits, int payload, const std::string& aes) {
  const auto impl = aes_choice(aes);
  check_dcf_shape(bits, payload);
  const int64_t n = alpha.size();
  expect_size(beta, payload * n, "beta");
  expect_size(roots, 4 * n, "roots");
  expect_size(s_cw, 2 * n * bits, "s_cw");
  expect_size(v_cw, payload * n * bits, "v_cw");
  expect_size(t_cw, 2 * n * bits, "t_cw");
  expect_size(final_cw, payload * n, "final");
  const uint64_t* ap = data_of<uint64_t>(alpha, "alpha", false);
  const uint64_t* bp = data_of<uint64_t>(beta, "beta", false);
  const uint64_t* rp = data_of<uint64_t>(roots, "roots", false);
  uint64_t* sp = data_of<uint64_t>(s_cw, "s_cw", true);
  uint64_t* vp = data_of<uint64_t>(v_cw, "v_cw", true);
  uint8_t* tp = data_of<uint8_t>(t_cw, "t_cw", true);
  uint64_t* fp = data_of<uint64_t>(final_cw, "final", true);
  py::gil_scoped_release nogil;
  medfl::smpc::dcf_gen_cpu(ap, bp, rp, sp, vp, tp, fp, n, bits, payload, impl);
}

py::tuple aes_tables() {
  py::array_t<uint32_t> rk(44), t0(256);
  medfl::smpc::aes_tables(rk.mutable_data(), t0.mutable_data());
  return py::make_tuple(rk, t0);
}

}  // namespace

static medfl::native::Registration reg("smpc", [](py::module_& m) {
  m.def("ring_matmul", &ring_matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("accumulate") = false,
        py::arg("force_portable") = false,
        "out (=|+=) a @ b mod 2^64 for C-contiguous uint64 matrices (AVX2 when the CPU has it).");
  m.def("dcf_eval", &dcf_eval, py::arg("party"), py::arg("seed"), py::arg("s_cw"), py::arg("v_cw"), py::arg("t_cw"),
        py::arg("final"), py::arg("x"), py::arg("out"), py::arg("bits"), py::arg("payload"), py::arg("aes") = "auto",
        "One party's DCF shares of payload * [x < alpha] at public points x (see medfl/smpc/fss/dcf.py).");
  m.def("dcf_gen", &dcf_gen, py::arg("alpha"), py::arg("beta"), py::arg("roots"), py::arg("s_cw"), py::arg("v_cw"),
        py::arg("t_cw"), py::arg("final"), py::arg("bits"), py::arg("payload"), py::arg("aes") = "auto",
        "DCF correction words for x -> beta * [x < alpha] from the parties' root seeds (see medfl/smpc/fss/dcf.py).");
  m.def("aes_tables", &aes_tables, "(round keys as 44 LE words, T-table T0) of the PRG's AES, as the GPU uses them");
#ifdef MEDFL_WITH_CUDA
  m.def(
      "ring_matmul_cuda",
      [](uintptr_t a, uintptr_t b, uintptr_t c, int64_t m, int64_t k, int64_t n, bool accumulate, uintptr_t stream) {
        if (m < 0 || k < 0 || n < 0) throw py::value_error("ring_matmul_cuda: negative size");
        medfl::smpc::ring_matmul_cuda(reinterpret_cast<const uint64_t*>(a), reinterpret_cast<const uint64_t*>(b),
                                      reinterpret_cast<uint64_t*>(c), m, k, n, accumulate, medfl::native::ptr(stream));
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("k"), py::arg("n"), py::arg("accumulate"),
      py::arg("stream"), "out (=|+=) a @ b mod 2^64 on device pointers (row-major uint64), on the given stream.");
  m.def(
      "dcf_eval_cuda",
      [](int party, uintptr_t seed, uintptr_t s_cw, uintptr_t v_cw, uintptr_t t_cw, uintptr_t final_cw, uintptr_t x,
         uintptr_t out, int64_t n, int bits, int payload, uintptr_t stream) {
        if (party != 0 && party != 1) throw py::value_error("dcf_eval_cuda: party must be 0 or 1");
        check_dcf_shape(bits, payload);
        medfl::smpc::DcfKeys key{reinterpret_cast<const uint64_t*>(seed), reinterpret_cast<const uint64_t*>(s_cw),
                                 reinterpret_cast<const uint64_t*>(v_cw), reinterpret_cast<const uint8_t*>(t_cw),
                                 reinterpret_cast<const uint64_t*>(final_cw)};
        medfl::smpc::dcf_eval_cuda(party, key, reinterpret_cast<const uint64_t*>(x), reinterpret_cast<uint64_t*>(out),
                                   n, bits, payload, medfl::native::ptr(stream));
      },
      py::arg("party"), py::arg("seed"), py::arg("s_cw"), py::arg("v_cw"), py::arg("t_cw"), py::arg("final"),
      py::arg("x"), py::arg("out"), py::arg("n"), py::arg("bits"), py::arg("payload"), py::arg("stream"),
      "DCF evaluation on device pointers (key layout of medfl/smpc/fss/dcf.py), on the given stream.");
  m.def(
      "dcf_gen_cuda",
      [](uintptr_t alpha, uintptr_t beta, uintptr_t roots, uintptr_t s_cw, uintptr_t v_cw, uintptr_t t_cw,
         uintptr_t final_cw, int64_t n, int bits, int payload, uintptr_t stream) {
        if (n < 0) throw py::value_error("dcf_gen_cuda: negative n " + std::to_string(n));
        check_dcf_shape(bits, payload);
        medfl::smpc::dcf_gen_cuda(reinterpret_cast<const uint64_t*>(alpha), reinterpret_cast<const uint64_t*>(beta),
                                  reinterpret_cast<const uint64_t*>(roots), reinterpret_cast<uint64_t*>(s_cw),
                                  reinterpret_cast<uint64_t*>(v_cw), reinterpret_cast<uint8_t*>(t_cw),
                                  reinterpret_cast<uint64_t*>(final_cw), n, bits, payload, medfl::native::ptr(stream));
      },
      py::arg("alpha"), py::arg("beta"), py::arg("roots"), py::arg("s_cw"), py::arg("v_cw"), py::arg("t_cw"),
      py::arg("final"), py::arg("n"), py::arg("bits"), py::arg("payload"), py::arg("stream"),
      "DCF correction words on device pointers (as dcf_gen, bit for bit), on the given stream.");
#endif
  m.def("smpc_impl", []() {
    py::dict d;
    d["ring_matmul"] = std::string(medfl::smpc::ring_matmul_impl());
    d["aes"] = std::string(medfl::smpc::aes_impl());
    return d;
  });
});
