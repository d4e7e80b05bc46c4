// CPU fixed-point kernels: element-wise, OpenMP across cores, auto-vectorised inner loops.
#include "fixed_point/fixed_point.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace medfl {
namespace fixed_point {
namespace {

template <typename U>
Status encode_impl(const float* x, U* out, int64_t n, int frac_bits, bool stochastic, uint64_t seed,
                   uint64_t offset) {
  constexpr int k = sizeof(U) * 8;
  const double scale = std::ldexp(1.0, frac_bits);
  const double lim = std::ldexp(1.0, k - 1);
  int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
  for (int64_t i = 0; i < n; ++i) {
    const double y = static_cast<double>(x[i]) * scale;
    double r;
    if (stochastic) {
      r = floor_exact(y);
      r += (uniform52(seed, offset, static_cast<uint64_t>(i)) < (y - r)) ? 1.0 : 0.0;
    } else {
      r = round_even(y);
    }
    // NaN fails both comparisons below only when negated, so test "inside" explicitly.
    if (!(r >= -lim && r < lim)) {
      first_bad = std::min(first_bad, i);
      out[i] = 0;
    } else {
      out[i] = static_cast<U>(static_cast<uint64_t>(static_cast<int64_t>(r)));
    }
  }
  if (first_bad == n) return Status{kOk, -1};
  const float v = x[first_bad];
  return Status{std::isfinite(v) ? kOverflow : kNonFinite, first_bad};
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
  return encode_impl<uint32_t>(x, out, n, f, st, seed, off);
}
Status encode_cpu64(const float* x, uint64_t* out, int64_t n, int f, bool st, uint64_t seed, uint64_t off) {
  return encode_impl<uint64_t>(x, out, n, f, st, seed, off);
}
void decode_cpu32(const uint32_t* v, float* out, int64_t n, int f) { decode_impl<uint32_t, int32_t>(v, out, n, f); }
void decode_cpu64(const uint64_t* v, float* out, int64_t n, int f) { decode_impl<uint64_t, int64_t>(v, out, n, f); }
void ring_sum_cpu32(const uint32_t* rows, uint32_t* out, int64_t m, int64_t n) { ring_sum_impl(rows, out, m, n); }
void ring_sum_cpu64(const uint64_t* rows, uint64_t* out, int64_t m, int64_t n) { ring_sum_impl(rows, out, m, n); }
void ring_add_cpu32(uint32_t* acc, const uint32_t* v, int64_t n) { ring_add_impl(acc, v, n); }
void ring_add_cpu64(uint64_t* acc, const uint64_t* v, int64_t n) { ring_add_impl(acc, v, n); }

}  // namespace fixed_point
}  // namespace medfl
