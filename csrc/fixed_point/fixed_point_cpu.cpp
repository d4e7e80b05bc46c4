// CPU fixed-point kernels: element-wise, OpenMP across cores, auto-vectorised inner loops.
#include "fixed_point/fixed_point.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace medfl {
namespace fixed_point {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One build, best code for the CPU it runs on: GCC emits AVX-512 / AVX2 / baseline clones and
// picks one at load time (ifunc). Every clone does the same IEEE operations (no FMA contraction:
// -ffp-contract=off), so the results are bit-identical on every CPU.
#define MEDFL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEDFL_CLONES
#endif
#define MEDFL_INLINE inline __attribute__((always_inline))

// uint64 (two's complement) of an integer-valued double r with |r| < 2^51, in a few vectorisable
// operations: r + 1.5 * 2^52 holds r in its low mantissa bits. Larger |r| are handled by the
// exact rescan of their block (see encode_block's range check).
MEDFL_INLINE uint64_t to_u64_small(double r) {
  const double t = r + 6755399441055744.0;  // 1.5 * 2^52
  uint64_t b;
  std::memcpy(&b, &t, sizeof b);
  return b - 0x4338000000000000ull;
}

// The rounding of one element (identical in the vector loop and in the rescan).
template <bool Stochastic>
MEDFL_INLINE double round_one(float xi, int64_t i, double scale, uint64_t seed, uint64_t offset) {
  const double y = static_cast<double>(xi) * scale;
  if constexpr (Stochastic) {
    const double r = floor_exact(y);
    return r + ((uniform53(seed, offset, static_cast<uint64_t>(i)) < (y - r)) ? 1.0 : 0.0);
  } else {
    return round_even(y);
  }
}

// Encode x[lo, hi). Returns nonzero if some element may be non-finite or out of range (the
// caller then rescans the block exactly); out-of-range elements are stored as 0. Two branch-free
// loops (store, then a conservative range check on the L2-resident block) so both vectorise.
template <typename U, bool Stochastic>
MEDFL_INLINE unsigned encode_block(const float* x, U* out, int64_t lo, int64_t hi, double scale, double lim,
                                   uint64_t seed, uint64_t offset) {
  for (int64_t i = lo; i < hi; ++i) {
    const double r = round_one<Stochastic>(x[i], i, scale, seed, offset);
    const double rc = (r >= -lim && r < lim) ? r : 0.0;  // NaN and +-inf are outside too
    if constexpr (sizeof(U) == 4) {
      out[i] = static_cast<U>(static_cast<int32_t>(rc));  // in [-2^31, 2^31): exact
    } else {
      out[i] = to_u64_small(rc);
    }
  }
  // |y| <= safe rounds (either way) to |r| < lim (and, for k = 64, |r| < 2^51 where to_u64_small
  // is exact); any other block is redone exactly by the caller.
  const double safe = sizeof(U) == 4 ? lim - 2.0 : 2251799813685246.0;  // 2^51 - 2
  unsigned bad = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const double y = static_cast<double>(x[i]) * scale;
    bad |= static_cast<unsigned>(!(y >= -safe && y <= safe));
  }
  return bad;
}

// The four instantiations, each compiled for several ISAs (runtime dispatch, see MEDFL_CLONES).
#define MEDFL_BLOCK(NAME, U, ST)                                                                      \
  MEDFL_CLONES __attribute__((noinline)) unsigned NAME(const float* x, U* out, int64_t lo, int64_t hi, \
                                                       double scale, double lim, uint64_t seed,       \
                                                       uint64_t offset) {                             \
    return encode_block<U, ST>(x, out, lo, hi, scale, lim, seed, offset);                            \
  }
MEDFL_BLOCK(block_nearest32, uint32_t, false)
MEDFL_BLOCK(block_stochastic32, uint32_t, true)
MEDFL_BLOCK(block_nearest64, uint64_t, false)
MEDFL_BLOCK(block_stochastic64, uint64_t, true)
#undef MEDFL_BLOCK

template <typename U, bool Stochastic>
unsigned block(const float* x, U* out, int64_t lo, int64_t hi, double scale, double lim, uint64_t seed,
               uint64_t offset) {
  if constexpr (sizeof(U) == 4) {
    return Stochastic ? block_stochastic32(x, out, lo, hi, scale, lim, seed, offset)
                      : block_nearest32(x, out, lo, hi, scale, lim, seed, offset);
  } else {
    return Stochastic ? block_stochastic64(x, out, lo, hi, scale, lim, seed, offset)
                      : block_nearest64(x, out, lo, hi, scale, lim, seed, offset);
  }
}

inline bool is_finite_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x7F800000u) != 0x7F800000u;
}

constexpr int64_t kBlock = 1 << 14;

// Blocks in parallel; a block with a bad element is rescanned (rare path) for its first
// non-finite and first out-of-range index. `out` is garbage when the status is not kOk.
template <typename U, bool Stochastic>
Status encode_impl(const float* x, U* out, int64_t n, int frac_bits, uint64_t seed, uint64_t offset) {
  constexpr int k = sizeof(U) * 8;
  const double scale = std::ldexp(1.0, frac_bits);
  const double lim = std::ldexp(1.0, k - 1);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t first_nonfinite = n, first_overflow = n;
#pragma omp parallel for schedule(static) reduction(min : first_nonfinite, first_overflow)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    if (!block<U, Stochastic>(x, out, lo, hi, scale, lim, seed, offset)) continue;
    for (int64_t i = lo; i < hi; ++i) {  // rare: exact scalar redo of the block
      const double r = round_one<Stochastic>(x[i], i, scale, seed, offset);
      const bool inside = r >= -lim && r < lim;
      out[i] = inside ? static_cast<U>(static_cast<uint64_t>(static_cast<int64_t>(r))) : U(0);
      if (!is_finite_bits(x[i])) {
        first_nonfinite = std::min(first_nonfinite, i);
      } else if (!inside) {
        first_overflow = std::min(first_overflow, i);
      }
    }
  }
  return make_status(first_nonfinite, first_overflow, n);
}

// (double)s rounded to nearest even, vectorisable without AVX-512DQ: both halves convert
// exactly and their sum is rounded once.
MEDFL_INLINE double i64_to_double(int64_t s) {
  const double hi = static_cast<double>(static_cast<int32_t>(s >> 32)) * 0x1.0p32;
  const double lo = small_u64_to_double(static_cast<uint64_t>(s) & 0xFFFFFFFFull);
  return hi + lo;
}

template <typename U, typename S>
MEDFL_INLINE void decode_block(const U* v, float* out, int64_t lo, int64_t hi, double inv) {
  for (int64_t i = lo; i < hi; ++i) {
    const S s = static_cast<S>(v[i]);
    const double d = sizeof(S) == 4 ? static_cast<double>(s) : i64_to_double(static_cast<int64_t>(s));
    out[i] = static_cast<float>(d * inv);
  }
}
MEDFL_CLONES __attribute__((noinline)) void decode_block32(const uint32_t* v, float* out, int64_t lo, int64_t hi,
                                                           double inv) {
  decode_block<uint32_t, int32_t>(v, out, lo, hi, inv);
}
MEDFL_CLONES __attribute__((noinline)) void decode_block64(const uint64_t* v, float* out, int64_t lo, int64_t hi,
                                                           double inv) {
  decode_block<uint64_t, int64_t>(v, out, lo, hi, inv);
}

template <typename U, typename S>
void decode_impl(const U* v, float* out, int64_t n, int frac_bits) {
  const double inv = std::ldexp(1.0, -frac_bits);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    if constexpr (sizeof(U) == 4) {
      decode_block32(v, out, lo, hi, inv);
    } else {
      decode_block64(v, out, lo, hi, inv);
    }
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
