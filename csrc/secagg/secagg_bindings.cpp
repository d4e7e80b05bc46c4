// Python bindings of the secagg kernels (registered into medfl._native through csrc/module.h).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/chacha20.h"
#include "module.h"
#include "secagg/secagg.h"

namespace py = pybind11;

namespace {

const uint8_t* bytes_of(const py::bytes& b, std::size_t want, const char* what) {
  std::string_view v(b);
  if (v.size() != want)
    throw py::value_error(std::string(what) + ": expected " + std::to_string(want) + " bytes, got " +
                          std::to_string(v.size()));
  return reinterpret_cast<const uint8_t*>(v.data());
}

// Blocks used by n bytes from counter must stay within the 32-bit counter (RFC 8439, section 2.4).
void check_counter(uint64_t counter, uint64_t nbytes) {
  const uint64_t blocks = (nbytes + 63) / 64;
  if (counter > 0xFFFFFFFFull || (blocks > 0 && counter + blocks - 1 > 0xFFFFFFFFull))
    throw py::value_error("chacha20: counter " + std::to_string(counter) + " + " + std::to_string(blocks) +
                          " blocks exceeds the 32-bit block counter");
}

py::bytes keystream(py::bytes key, py::bytes nonce, uint64_t counter, uint64_t nbytes) {
  const uint8_t* k = bytes_of(key, 32, "key");
  const uint8_t* nn = bytes_of(nonce, 12, "nonce");
  check_counter(counter, nbytes);
  py::bytes out(nullptr, static_cast<py::ssize_t>(nbytes));
  uint8_t* o = reinterpret_cast<uint8_t*>(PyBytes_AsString(out.ptr()));
  {
    py::gil_scoped_release release;
    medfl::common::chacha20_keystream(k, nn, static_cast<uint32_t>(counter), o, nbytes);
  }
  return out;
}

void apply_masks(py::array vec, py::array_t<uint8_t, py::array::c_style> keys,
                 py::array_t<int8_t, py::array::c_style> signs, py::bytes nonce) {
  const uint8_t* nn = bytes_of(nonce, 12, "nonce");
  const std::size_t m = static_cast<std::size_t>(signs.size());
  if (static_cast<std::size_t>(keys.size()) != 32 * m)
    throw py::value_error("apply_masks: keys has " + std::to_string(keys.size()) + " bytes for " +
                          std::to_string(m) + " masks; expected 32 per mask");
  for (std::size_t j = 0; j < m; ++j)
    if (signs.data()[j] != 1 && signs.data()[j] != -1)
      throw py::value_error("apply_masks: sign " + std::to_string(int(signs.data()[j])) + " is not +1 or -1");
  const std::size_t n = static_cast<std::size_t>(vec.size());
  const std::size_t word = static_cast<std::size_t>(vec.itemsize());
  check_counter(0, n * word);
  if (vec.dtype().equal(py::dtype::of<uint32_t>())) {
    uint32_t* v = medfl::native::data_of<uint32_t>(vec, "vec", true);
    py::gil_scoped_release release;
    medfl::secagg::apply_masks<uint32_t>(v, n, keys.data(), signs.data(), m, nn);
  } else if (vec.dtype().equal(py::dtype::of<uint64_t>())) {
    uint64_t* v = medfl::native::data_of<uint64_t>(vec, "vec", true);
    py::gil_scoped_release release;
    medfl::secagg::apply_masks<uint64_t>(v, n, keys.data(), signs.data(), m, nn);
  } else {
    throw py::value_error("vec: expected dtype uint32 or uint64, got " + std::string(py::str(vec.dtype())));
  }
}

std::pair<int64_t, int64_t> quantize_and_mask(py::array x, py::array out, int frac_bits, uint64_t seed,
                                              py::array_t<uint8_t, py::array::c_style> keys,
                                              py::array_t<int8_t, py::array::c_style> signs, py::bytes nonce) {
  const uint8_t* nn = bytes_of(nonce, 12, "nonce");
  const std::size_t m = static_cast<std::size_t>(signs.size());
  if (static_cast<std::size_t>(keys.size()) != 32 * m)
    throw py::value_error("quantize_and_mask: keys has " + std::to_string(keys.size()) + " bytes for " +
                          std::to_string(m) + " masks; expected 32 per mask");
  for (std::size_t j = 0; j < m; ++j)
    if (signs.data()[j] != 1 && signs.data()[j] != -1)
      throw py::value_error("quantize_and_mask: sign " + std::to_string(int(signs.data()[j])) + " is not +1 or -1");
  if (x.size() != out.size())
    throw py::value_error("quantize_and_mask: x has " + std::to_string(x.size()) + " elements, out " +
                          std::to_string(out.size()));
  const float* xp = medfl::native::data_of<float>(x, "x", false);
  const std::size_t n = static_cast<std::size_t>(x.size());
  check_counter(0, n * static_cast<uint64_t>(out.itemsize()));
  if (out.dtype().equal(py::dtype::of<uint32_t>())) {
    if (frac_bits < 0 || frac_bits > 30) throw py::value_error("frac_bits must be in [0, 30] for a 32-bit ring");
    uint32_t* o = medfl::native::data_of<uint32_t>(out, "out", true);
    py::gil_scoped_release release;
    return medfl::secagg::quantize_and_mask<uint32_t>(xp, o, n, frac_bits, seed, keys.data(), signs.data(), m, nn);
  }
  if (out.dtype().equal(py::dtype::of<uint64_t>())) {
    if (frac_bits < 0 || frac_bits > 62) throw py::value_error("frac_bits must be in [0, 62] for a 64-bit ring");
    uint64_t* o = medfl::native::data_of<uint64_t>(out, "out", true);
    py::gil_scoped_release release;
    return medfl::secagg::quantize_and_mask<uint64_t>(xp, o, n, frac_bits, seed, keys.data(), signs.data(), m, nn);
  }
  throw py::value_error("out: expected dtype uint32 or uint64, got " + std::string(py::str(out.dtype())));
}

}  // namespace

static medfl::native::Registration reg("secagg", [](py::module_& m) {
  m.def("chacha20_keystream", &keystream, py::arg("key"), py::arg("nonce"), py::arg("counter"), py::arg("nbytes"),
        "ChaCha20 keystream of RFC 8439 (32-byte key, 12-byte nonce, 32-bit block counter).");
  m.def("apply_masks", &apply_masks, py::arg("vec"), py::arg("keys"), py::arg("signs"), py::arg("nonce"),
        "Add sign * ChaCha20 keystream words of every key to the ring vector in place (wrapping).");
  m.def("quantize_and_mask", &quantize_and_mask, py::arg("x"), py::arg("out"), py::arg("frac_bits"), py::arg("seed"),
        py::arg("keys"), py::arg("signs"), py::arg("nonce"),
        "Fused stochastic fixed-point encode + masks, tile by tile; returns (code, index) as encode does.");
#ifdef MEDFL_WITH_CUDA
  m.def(
      "chacha20_keystream_cuda",
      [](py::bytes key, py::bytes nonce, uint64_t counter, uintptr_t out, uint64_t nbytes, uintptr_t stream) {
        const uint8_t* k = bytes_of(key, 32, "key");
        const uint8_t* nn = bytes_of(nonce, 12, "nonce");
        check_counter(counter, nbytes);
        medfl::common::chacha20_keystream_cuda(k, nn, static_cast<uint32_t>(counter), medfl::native::ptr(out), nbytes,
                                               medfl::native::ptr(stream));
      },
      py::arg("key"), py::arg("nonce"), py::arg("counter"), py::arg("out"), py::arg("nbytes"), py::arg("stream"));
  m.def(
      "apply_masks_cuda",
      [](uintptr_t vec, int ring_bits, uint64_t n, py::array_t<uint8_t, py::array::c_style> keys,
         py::array_t<int8_t, py::array::c_style> signs, py::bytes nonce, uintptr_t stream) {
        const uint8_t* nn = bytes_of(nonce, 12, "nonce");
        const std::size_t m = static_cast<std::size_t>(signs.size());
        if (ring_bits != 32 && ring_bits != 64)
          throw py::value_error("apply_masks_cuda: ring_bits must be 32 or 64, got " + std::to_string(ring_bits));
        if (static_cast<std::size_t>(keys.size()) != 32 * m)
          throw py::value_error("apply_masks_cuda: keys has " + std::to_string(keys.size()) + " bytes for " +
                                std::to_string(m) + " masks; expected 32 per mask");
        for (std::size_t j = 0; j < m; ++j)
          if (signs.data()[j] != 1 && signs.data()[j] != -1)
            throw py::value_error("apply_masks_cuda: sign " + std::to_string(int(signs.data()[j])) + " is not +1 or -1");
        if (m > 512)
          throw py::value_error("apply_masks_cuda: at most 512 masks per call (got " + std::to_string(m) +
                                "); apply them in several calls");
        check_counter(0, n * static_cast<uint64_t>(ring_bits / 8));
        medfl::secagg::apply_masks_cuda(medfl::native::ptr(vec), ring_bits, n, keys.data(), signs.data(), m, nn,
                                        medfl::native::ptr(stream));
      },
      py::arg("vec"), py::arg("ring_bits"), py::arg("n"), py::arg("keys"), py::arg("signs"), py::arg("nonce"),
      py::arg("stream"));
  m.def(
      "quantize_and_mask_cuda",
      [](uintptr_t x, uintptr_t out, int ring_bits, uint64_t n, int frac_bits, uint64_t seed,
         py::array_t<uint8_t, py::array::c_style> keys, py::array_t<int8_t, py::array::c_style> signs,
         py::bytes nonce, uintptr_t stream) {
        const uint8_t* nn = bytes_of(nonce, 12, "nonce");
        const std::size_t m = static_cast<std::size_t>(signs.size());
        if (ring_bits != 32 && ring_bits != 64)
          throw py::value_error("quantize_and_mask_cuda: ring_bits must be 32 or 64, got " +
                                std::to_string(ring_bits));
        if (frac_bits < 0 || frac_bits > ring_bits - 2)
          throw py::value_error("quantize_and_mask_cuda: frac_bits must be in [0, ring_bits - 2], got " +
                                std::to_string(frac_bits));
        if (static_cast<std::size_t>(keys.size()) != 32 * m)
          throw py::value_error("quantize_and_mask_cuda: keys has " + std::to_string(keys.size()) + " bytes for " +
                                std::to_string(m) + " masks; expected 32 per mask");
        if (m > 512)
          throw py::value_error("quantize_and_mask_cuda: at most 512 masks per call (got " + std::to_string(m) + ")");
        for (std::size_t j = 0; j < m; ++j)
          if (signs.data()[j] != 1 && signs.data()[j] != -1)
            throw py::value_error("quantize_and_mask_cuda: sign " + std::to_string(int(signs.data()[j])) +
                                  " is not +1 or -1");
        check_counter(0, n * static_cast<uint64_t>(ring_bits / 8));
        std::pair<int64_t, int64_t> st;
        {
          py::gil_scoped_release release;
          st = medfl::secagg::quantize_and_mask_cuda(reinterpret_cast<const float*>(x), medfl::native::ptr(out),
                                                     ring_bits, n, frac_bits, seed, keys.data(), signs.data(), m, nn,
                                                     medfl::native::ptr(stream));
        }
        return py::make_tuple(st.first, st.second);
      },
      py::arg("x"), py::arg("out"), py::arg("ring_bits"), py::arg("n"), py::arg("frac_bits"), py::arg("seed"),
      py::arg("keys"), py::arg("signs"), py::arg("nonce"), py::arg("stream"));
#endif
});
