// Fixed-point encoding of float32 into the ring Z_2^k (k = 32 or 64) and ring sums.
// The exact semantics (shared with the NumPy reference in medfl/native/reference/fixed_point.py):
//   y = (double)x * 2^f;  nearest: r = rint(y) (half to even);
//   stochastic: r = floor(y) + (u_i < y - floor(y)), u_i = (mix64(seed + (offset+i+1)*G) >> 11) * 2^-53
//   r must lie in [-2^(k-1), 2^(k-1)); stored as (uint_k)(int64)r (two's complement).
//   NaN/inf anywhere is reported before any overflow (first non-finite index wins).
//   decode: (float)((double)(int_k)v * 2^-f).
#pragma once
#include <cstdint>
#include <cstring>

namespace medfl {
namespace fixed_point {

enum Code : int64_t { kOk = 0, kNonFinite = 1, kOverflow = 2 };

struct Status {
  int64_t code;   // Code
  int64_t index;  // first offending flat index (or -1)
};

// Combine the first non-finite and the first out-of-range index (n = none) into a Status:
// a non-finite value anywhere wins over an overflow.
inline Status make_status(int64_t first_nonfinite, int64_t first_overflow, int64_t n) {
  if (first_nonfinite < n) return Status{kNonFinite, first_nonfinite};
  if (first_overflow < n) return Status{kOverflow, first_overflow};
  return Status{kOk, -1};
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

#if defined(__CUDACC__)
#define MEDFL_HD __host__ __device__ __forceinline__
#else
#define MEDFL_HD inline
#endif

MEDFL_HD uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

// Round half to even without libm (vectorisable). For a = |y| < 2^52, a + 2^52 lies in
// [2^52, 2^53) where the spacing of doubles is exactly 1, so (a + 2^52) - 2^52 is a rounded to
// an integer in the default rounding mode (half to even, symmetric, so the sign is put back
// afterwards); |y| >= 2^52 are integers already. Requires strict IEEE evaluation (no
// -ffast-math, no FMA contraction). (The well-known 1.5 * 2^52 variant is exact only for
// |y| < 2^51; this one holds for every double, not just for float32 inputs times 2^f.)
MEDFL_HD double round_even(double y) {
  const double two52 = 4503599627370496.0;  // 2^52
  const double a = y < 0 ? -y : y;
  const double t = (a + two52) - two52;
  return a < two52 ? (y < 0 ? -t : t) : y;
}

MEDFL_HD double floor_exact(double y) {
  const double r = round_even(y);
  return r > y ? r - 1.0 : r;
}

// Exact double of an integer m < 2^52 through the bit pattern of 2^52 + m; vectorises on any
// x86-64 (unlike the uint64 -> double conversion, which needs AVX-512DQ).
MEDFL_HD double small_u64_to_double(uint64_t m) {
  const uint64_t bits = m | 0x4330000000000000ULL;
  double d;
  memcpy(&d, &bits, sizeof d);
  return d - 4503599627370496.0;
}

// u_i = (h >> 11) * 2^-53 in [0, 1), h = mix64(seed + (offset + i + 1) * G). The 53-bit integer
// is split into its top 32 and low 21 bits; both parts convert exactly and their scaled sum is
// exactly representable, so the result is the exact (h >> 11) * 2^-53 on every backend.
MEDFL_HD double uniform53(uint64_t seed, uint64_t offset, uint64_t i) {
  const uint64_t h = mix64(seed + (offset + i + 1) * kGolden);
  const double hi = small_u64_to_double(h >> 32);               // bits 63..32 of h
  const double lo = small_u64_to_double((h >> 11) & 0x1FFFFFu);  // bits 31..11 of h
  return hi * 0x1.0p-32 + lo * 0x1.0p-53;
}

// CPU kernels (OpenMP). When the status is not kOk, `out` holds garbage (partly written); the
// Python layer allocates it and never hands it out then.
Status encode_cpu32(const float* x, uint32_t* out, int64_t n, int frac_bits, bool stochastic, uint64_t seed,
                    uint64_t offset);
Status encode_cpu64(const float* x, uint64_t* out, int64_t n, int frac_bits, bool stochastic, uint64_t seed,
                    uint64_t offset);
void decode_cpu32(const uint32_t* v, float* out, int64_t n, int frac_bits);
void decode_cpu64(const uint64_t* v, float* out, int64_t n, int frac_bits);
void ring_sum_cpu32(const uint32_t* rows, uint32_t* out, int64_t m, int64_t n);
void ring_sum_cpu64(const uint64_t* rows, uint64_t* out, int64_t m, int64_t n);
void ring_add_cpu32(uint32_t* acc, const uint32_t* v, int64_t n);
void ring_add_cpu64(uint64_t* acc, const uint64_t* v, int64_t n);
// The stochastic-rounding uniforms u_offset .. u_(offset+n-1) (for tests and for callers that
// reproduce the rounding elsewhere).
void uniforms_cpu(double* out, int64_t n, uint64_t seed, uint64_t offset);

#ifdef MEDFL_WITH_CUDA
// CUDA kernels on the caller's stream (pointers are device pointers). encode synchronises the
// stream to report errors; the others are asynchronous.
Status encode_cuda(const float* x, void* out, int ring_bits, int64_t n, int frac_bits, bool stochastic,
                   uint64_t seed, uint64_t offset, void* stream);
void decode_cuda(const void* v, int ring_bits, float* out, int64_t n, int frac_bits, void* stream);
void ring_sum_cuda(const void* rows, void* out, int ring_bits, int64_t m, int64_t n, void* stream);
void ring_add_cuda(void* acc, const void* v, int ring_bits, int64_t n, void* stream);
#endif

}  // namespace fixed_point
}  // namespace medfl
