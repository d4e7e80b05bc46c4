// CPU kernels of per-sample clipping (declared and described in privacy.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/chacha20.h"
#include "privacy/privacy.h"

namespace medfl::privacy {
namespace {

// Columns per task: enough work per OpenMP task to hide its start, few enough tasks that every
// thread gets several.
constexpr std::int64_t kChunk = 1 << 14;

template <typename T>
double sumsq(const T* p, std::int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t j = 0; j < n; ++j) acc += static_cast<double>(p[j]) * static_cast<double>(p[j]);
  return acc;
}

}  // namespace

template <typename T>
void row_sqnorms_cpu(const T* x, std::int64_t rows, std::int64_t cols, double* out, int threads) {
  const std::int64_t chunks = std::max<std::int64_t>(1, (cols + kChunk - 1) / kChunk);
  // Partial sums per (row, chunk), added in a fixed order: the result does not depend on threads.
  std::vector<double> part(static_cast<std::size_t>(rows * chunks));
  const std::int64_t tasks = rows * chunks;
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks > 1 && rows * cols > (1 << 16))
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t r = t / chunks, k = t % chunks;
    const std::int64_t j0 = k * kChunk, j1 = std::min(cols, j0 + kChunk);
    part[static_cast<std::size_t>(t)] = sumsq(x + r * cols + j0, j1 - j0);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    double acc = 0.0;
    for (std::int64_t k = 0; k < chunks; ++k) acc += part[static_cast<std::size_t>(r * chunks + k)];
    out[r] = acc;
  }
}

std::int64_t clip_factors_cpu(const double* sq, std::int64_t layers, std::int64_t batch, double max_norm,
                              double* norms, double* factors) {
  std::int64_t bad = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    double acc = 0.0;
    for (std::int64_t l = 0; l < layers; ++l) acc += sq[l * batch + b];
    const double n = std::sqrt(acc);
    norms[b] = n;
    if (!std::isfinite(n)) {
      ++bad;
      factors[b] = 0.0;
    } else {
      factors[b] = std::min(1.0, max_norm / (n + 1e-6));
    }
  }
  return bad;
}

template <typename T>
void clipped_sum_cpu(const T* x, const T* c, std::int64_t rows, std::int64_t cols, T* out, bool accumulate,
                     int threads) {
  // Column blocks small enough that out's block stays in L1 while every row is added to it.
  constexpr std::int64_t kBlock = 2048;
  const std::int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1 && rows * cols > (1 << 16))
  for (std::int64_t k = 0; k < blocks; ++k) {
    const std::int64_t j0 = k * kBlock, n = std::min(cols, j0 + kBlock) - j0;
    T* o = out + j0;
    if (!accumulate) {
#pragma omp simd
      for (std::int64_t j = 0; j < n; ++j) o[j] = T(0);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const T cr = c[r];
      const T* xr = x + r * cols + j0;
#pragma omp simd
      for (std::int64_t j = 0; j < n; ++j) o[j] += cr * xr[j];
    }
  }
}

template <typename T>
void group_norm_affine_cpu(const T* a, const T* g, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                           std::int64_t groups, double eps, T* wg, T* bg, double* sq, int threads) {
  const std::int64_t per = channels / groups;  // channels per group
  const std::int64_t n = per * spatial;        // elements per (sample, group)
  const std::int64_t tasks = batch * groups;
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks > 1 && batch * channels * spatial > (1 << 15))
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t b = t / groups, k = t % groups;
    const std::int64_t off = (b * channels + k * per) * spatial;
    const T* ap = a + off;
    const T* gp = g + off;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(ap[i]);
    const double mu = n ? s / static_cast<double>(n) : 0.0;
    double v = 0.0;
#pragma omp simd reduction(+ : v)
    for (std::int64_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(ap[i]) - mu;
      v += d * d;
    }
    const double rstd = 1.0 / std::sqrt((n ? v / static_cast<double>(n) : 0.0) + eps);
    for (std::int64_t c = 0; c < per; ++c) {
      const T* ac = ap + c * spatial;
      const T* gc = gp + c * spatial;
      double sw = 0.0, sb = 0.0;
#pragma omp simd reduction(+ : sw, sb)
      for (std::int64_t i = 0; i < spatial; ++i) {
        const double gi = static_cast<double>(gc[i]);
        sw += gi * (static_cast<double>(ac[i]) - mu);
        sb += gi;
      }
      wg[b * channels + k * per + c] = static_cast<T>(sw * rstd);
      bg[b * channels + k * per + c] = static_cast<T>(sb);
    }
  }
  if (sq != nullptr) {
    for (std::int64_t b = 0; b < batch; ++b) {
      double acc = 0.0;
      for (std::int64_t c = 0; c < channels; ++c) {
        const double w = static_cast<double>(wg[b * channels + c]), v = static_cast<double>(bg[b * channels + c]);
        acc += w * w + v * v;
      }
      sq[b] = acc;
    }
  }
}

template <typename T>
void gaussian_noise_cpu(const std::uint8_t key[32], T* out, std::int64_t n, double stddev, int threads) {
  constexpr std::int64_t kPairs = 1024;  // pairs per task: 16 KiB of keystream, 256 whole ChaCha20 blocks
  const std::int64_t pairs = (n + 1) / 2;
  const std::int64_t tasks = (pairs + kPairs - 1) / kPairs;
  const std::uint8_t nonce[12] = {};
  const double two_pi = 6.283185307179586;   // the double nearest 2 pi, as Python's 2.0 * math.pi
  const double inv53 = 1.0 / 9007199254740992.0;  // 2^-53
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks > 1)
  for (std::int64_t t = 0; t < tasks; ++t) {
    alignas(64) std::uint8_t ks[16 * kPairs];
    const std::int64_t p0 = t * kPairs, np = std::min(kPairs, pairs - p0);
    medfl::common::chacha20_keystream(key, nonce, static_cast<std::uint32_t>(p0 / 4), ks,
                                      static_cast<std::size_t>(16 * np));
    for (std::int64_t j = 0; j < np; ++j) {
      std::uint64_t w0, w1;
      std::memcpy(&w0, ks + 16 * j, 8);
      std::memcpy(&w1, ks + 16 * j + 8, 8);
      const double u0 = (static_cast<double>(w0 >> 11) + 0.5) * inv53;  // in (0, 1)
      const double u1 = (static_cast<double>(w1 >> 11) + 0.5) * inv53;
      const double r = std::sqrt(-2.0 * std::log(u0));
      const double theta = two_pi * u1;
      double sin_t, cos_t;
#if defined(__GLIBC__)
      ::sincos(theta, &sin_t, &cos_t);  // both from one argument reduction; the values of sin() and cos()
#else
      sin_t = std::sin(theta);
      cos_t = std::cos(theta);
#endif
      const std::int64_t i = p0 + j;
      out[i] = static_cast<T>(r * cos_t * stddev);
      if (pairs + i < n) out[pairs + i] = static_cast<T>(r * sin_t * stddev);
    }
  }
}

template void gaussian_noise_cpu<float>(const std::uint8_t*, float*, std::int64_t, double, int);
template void gaussian_noise_cpu<double>(const std::uint8_t*, double*, std::int64_t, double, int);
template void row_sqnorms_cpu<float>(const float*, std::int64_t, std::int64_t, double*, int);
template void row_sqnorms_cpu<double>(const double*, std::int64_t, std::int64_t, double*, int);
template void clipped_sum_cpu<float>(const float*, const float*, std::int64_t, std::int64_t, float*, bool, int);
template void clipped_sum_cpu<double>(const double*, const double*, std::int64_t, std::int64_t, double*, bool, int);
template void group_norm_affine_cpu<float>(const float*, const float*, std::int64_t, std::int64_t, std::int64_t,
                                           std::int64_t, double, float*, float*, double*, int);
template void group_norm_affine_cpu<double>(const double*, const double*, std::int64_t, std::int64_t, std::int64_t,
                                            std::int64_t, double, double*, double*, double*, int);

}  // namespace medfl::privacy
