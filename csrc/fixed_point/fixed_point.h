// Fixed-point encoding of float32 into the ring Z_2^k (k = 32 or 64) and ring sums.
// The exact semantics (shared with the NumPy reference in medfl/fixed_point.py):
//   y = (double)x * 2^f;  nearest: r = rint(y) (half to even);
//   stochastic: r = floor(y) + (u_i < y - floor(y)), u_i = (mix64(seed + (offset+i+1)*G) >> 12) * 2^-52
//   r must lie in [-2^(k-1), 2^(k-1)); stored as (uint_k)(int64)r (two's complement).
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

// Round half to even without libm (vectorisable): for |y| < 2^52, (y + 1.5*2^52) - 1.5*2^52
// rounds y to an integer in the default rounding mode; larger |y| are integers already.
// Requires strict IEEE evaluation (no -ffast-math, no FMA contraction).
MEDFL_HD double round_even(double y) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double a = y < 0 ? -y : y;
  const double r = (y + magic) - magic;
  return a < 4503599627370496.0 ? r : y;  // 2^52
}

MEDFL_HD double floor_exact(double y) {
  const double r = round_even(y);
  return r > y ? r - 1.0 : r;
}

// u_i in [0, 1) with 52 random bits. The integer -> double conversion goes through the bit
// pattern of 2^52 + m (exact for m < 2^52), which vectorises on any x86-64, unlike cvtsi2sd.
MEDFL_HD double uniform52(uint64_t seed, uint64_t offset, uint64_t i) {
  const uint64_t h = mix64(seed + (offset + i + 1) * kGolden);
  const uint64_t bits = (h >> 12) | 0x4330000000000000ULL;
  double d;
  memcpy(&d, &bits, sizeof d);
  return (d - 4503599627370496.0) * 0x1.0p-52;
}

// CPU kernels (OpenMP). Outputs may be partly written when the status is not kOk.
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

#ifdef MEDFL_WITH_CUDA
// CUDA kernels on the caller's stream (pointers are device pointers). encode synchronises the
// stream to report errors; the others are asynchronous.
Status encode_cuda(const float* x, void* out, int ring_bits, int64_t n, int frac_bits, bool stochastic,
                   uint64_t seed, uint64_t offset, void* stream);
void decode_cuda(const void* v, int ring_bits, float* out, int64_t n, int frac_bits, void* stream);
void ring_sum_cuda(const void* rows, void* out, int ring_bits, int64_t m, int64_t n, void* stream);
void ring_add_cuda(void* acc, const void* v, int ring_bits, int64_t n, void* stream);
int cuda_device_count();
#endif

}  // namespace fixed_point
}  // namespace medfl
