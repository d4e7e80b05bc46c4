// CPU fixed-point kernels: element-wise, OpenMP across cores, auto-vectorised inner loops.
#include "fixed_point/fixed_point.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace medfl {
namespace fixed_point {
namespace {

inline bool is_finite_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x7F800000u) != 0x7F800000u;
}

// One pass: round, range-check, store. The two "first bad index" reductions keep the loop free
// of early exits so it vectorises; `out` is garbage when the status is not kOk.
template <typename U, bool Stochastic>
Status encode_impl(const float* x, U* out, int64_t n, int frac_bits, uint64_t seed, uint64_t offset) {
  constexpr int k = sizeof(U) * 8;
  const double scale = std::ldexp(1.0, frac_bits);
  const double lim = std::ldexp(1.0, k - 1);
  int64_t first_nonfinite = n, first_overflow = n;
#pragma omp parallel for simd schedule(static) reduction(min : first_nonfinite, first_overflow)
  for (int64_t i = 0; i < n; ++i) {
    const double y = static_cast<double>(x[i]) * scale;
    double r;
    if constexpr (Stochastic) {
      r = floor_exact(y);
      r += (uniform53(seed, offset, static_cast<uint64_t>(i)) < (y - r)) ? 1.0 : 0.0;
    } else {
      r = round_even(y);
    }
    const bool finite = is_finite_bits(x[i]);
    const bool inside = r >= -lim && r < lim;  // false for NaN
    first_nonfinite = finite ? first_nonfinite : std::min(first_nonfinite, i);
    first_overflow = (inside || !finite) ? first_overflow : std::min(first_overflow, i);
    const double rc = inside ? r : 0.0;
    if constexpr (k == 32) {
      out[i] = static_cast<U>(static_cast<int32_t>(rc));  // in [-2^31, 2^31): exact
    } else {
      out[i] = static_cast<U>(static_cast<int64_t>(rc));
    }
  }
  return make_status(first_nonfinite, first_overflow, n);
}

template <typename U, typename S>
void decode_impl(const U* v, float* out, int64_t n, int frac_bits) {
  const double inv = std::ldexp(1.0, -frac_bits);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>(static_cast<double>(static_cast<int64_t>(static_cast<S>(v[i]))) * inv);
  }
}

template <typename U>
void ring_sum_impl(const U* rows, U* out, int64_t m, int64_t n) {
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    U* o = out + lo;
    for (int64_t j = 0; j < hi - lo; ++j) o[j] = 0;
    for (int64_t r = 0; r < m; ++r) {
      const U* src = rows + r * n + lo;
#pragma omp simd
      for (int64_t j = 0; j < hi - lo; ++j) o[j] = static_cast<U>(o[j] + src[j]);
    }
  }
}

template <typename U>
void ring_add_impl(U* acc, const U* v, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) acc[i] = static_cast<U>(acc[i] + v[i]);
}

}  // namespace

Status encode_cpu32(const float* x, uint32_t* out, int64_t n, int f, bool st, uint64_t seed, uint64_t off) {
  return st ? encode_impl<uint32_t, true>(x, out, n, f, seed, off) : encode_impl<uint32_t, false>(x, out, n, f, seed, off);
}
Status encode_cpu64(const float* x, uint64_t* out, int64_t n, int f, bool st, uint64_t seed, uint64_t off) {
  return st ? encode_impl<uint64_t, true>(x, out, n, f, seed, off) : encode_impl<uint64_t, false>(x, out, n, f, seed, off);
}
void decode_cpu32(const uint32_t* v, float* out, int64_t n, int f) { decode_impl<uint32_t, int32_t>(v, out, n, f); }
void decode_cpu64(const uint64_t* v, float* out, int64_t n, int f) { decode_impl<uint64_t, int64_t>(v, out, n, f); }
void ring_sum_cpu32(const uint32_t* rows, uint32_t* out, int64_t m, int64_t n) { ring_sum_impl(rows, out, m, n); }
void ring_sum_cpu64(const uint64_t* rows, uint64_t* out, int64_t m, int64_t n) { ring_sum_impl(rows, out, m, n); }
void ring_add_cpu32(uint32_t* acc, const uint32_t* v, int64_t n) { ring_add_impl(acc, v, n); }
void ring_add_cpu64(uint64_t* acc, const uint64_t* v, int64_t n) { ring_add_impl(acc, v, n); }

void uniforms_cpu(double* out, int64_t n, uint64_t seed, uint64_t offset) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = uniform53(seed, offset, static_cast<uint64_t>(i));
}

}  // namespace fixed_point
}  // namespace medfl
