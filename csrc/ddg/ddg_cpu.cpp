// CPU discrete Gaussian noise (see ddg.h for the sampler and the stream layout): OpenMP over chunks,
// each pass's keystream built in AVX2 tiles (csrc/common/chacha20.h) and consumed from L1.
#include "ddg/ddg.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/chacha20.h"

namespace medfl::ddg {
namespace {

struct Params {
  double t, s2, shift;  // scale of the proposal, sigma^2, sigma^2 / t
};

// One candidate from two 64-bit words: writes y and returns whether it is accepted.
inline bool candidate(const Params& p, uint64_t w0, uint64_t w1, int64_t* y) {
  constexpr double kInv53 = 1.0 / 9007199254740992.0;
  const double u0 = (static_cast<double>(w0 >> 11) + 0.5) * kInv53;
  const double vd = std::floor(-p.t * std::log(u0));
  const bool neg = (w0 & 1u) != 0;
  if (neg && vd == 0.0) return false;
  const double d = vd - p.shift;
  const double u1 = (static_cast<double>(w1 >> 11) + 0.5) * kInv53;
  if (!(u1 < std::exp(-(d * d) / (2.0 * p.s2)))) return false;
  const int64_t v = static_cast<int64_t>(vd);
  *y = neg ? -v : v;
  return true;
}

template <typename T>
bool noise_chunk(const Params& p, T* v, std::size_t len, uint64_t chunk, const uint8_t key[32]) {
  constexpr int kLanes = common::kChachaLanes;
  constexpr std::size_t kWords = kPassBlocks * 8;  // 64-bit words per pass
  alignas(32) uint64_t words[kWords];
  std::size_t filled = 0;
  for (uint32_t pass = 0; pass < kMaxPasses && filled < len; ++pass) {
    uint8_t nonce[12];
    std::memcpy(nonce, &chunk, 8);
    std::memcpy(nonce + 8, &pass, 4);
    uint32_t st[16];
    common::chacha20_init_state(key, nonce, st);
    for (std::size_t b = 0; b < kPassBlocks; b += kLanes)
      common::chacha20_tile(st, static_cast<uint32_t>(b), reinterpret_cast<uint8_t*>(words + 8 * b));
    for (std::size_t k = 0; k < kWords && filled < len; k += 2) {
      int64_t y;
      if (candidate(p, words[k], words[k + 1], &y)) v[filled++] += static_cast<T>(y);
    }
  }
  return filled == len;
}

}  // namespace

template <typename T>
int add_discrete_gaussian_cpu(T* vec, std::size_t n, double sigma, const uint8_t key[32], int threads) {
  const double t = std::floor(sigma) + 1.0;
  const Params p{t, sigma * sigma, sigma * sigma / t};
  const std::ptrdiff_t chunks = static_cast<std::ptrdiff_t>((n + kChunk - 1) / kChunk);
  int failed = 0;
#pragma omp parallel for schedule(static) num_threads(std::max(1, threads)) reduction(| : failed) if (chunks > 4)
  for (std::ptrdiff_t c = 0; c < chunks; ++c) {
    const std::size_t begin = static_cast<std::size_t>(c) * kChunk;
    if (!noise_chunk(p, vec + begin, std::min(kChunk, n - begin), static_cast<uint64_t>(c), key)) failed = 1;
  }
  return failed ? -1 : 0;
}

template int add_discrete_gaussian_cpu<uint32_t>(uint32_t*, std::size_t, double, const uint8_t*, int);
template int add_discrete_gaussian_cpu<uint64_t>(uint64_t*, std::size_t, double, const uint8_t*, int);

}  // namespace medfl::ddg
