// CPU kernels of secure aggregation: the masking of a ring vector that consumes each ChaCha20
// keystream tile (csrc/common/chacha20.h) while it is in cache, and the fused quantize + mask.
#include "secagg/secagg.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "common/chacha20.h"
#include "fixed_point/fixed_point.h"

namespace medfl::secagg {
namespace {

constexpr int kLanes = common::kChachaLanes;              // blocks of one keystream tile
constexpr std::size_t kTileBytes = common::kChachaTileBytes;  // keystream bytes per tile

// v +=/-= one keystream tile (kLanes blocks from `counter`), on the first len <= tile words of v;
// ks is the tile's scratch (512 bytes, in L1).
template <typename T>
inline void mask_tile(const uint32_t in[16], uint32_t counter, int sign, T* v, std::size_t len, T* ks) {
  common::chacha20_tile(in, counter, reinterpret_cast<uint8_t*>(ks));
  if (sign > 0) {
    for (std::size_t i = 0; i < len; ++i) v[i] += ks[i];
  } else {
    for (std::size_t i = 0; i < len; ++i) v[i] -= ks[i];
  }
}

}  // namespace

template <typename T>
void apply_masks(T* vec, std::size_t n, const uint8_t* keys, const int8_t* signs, std::size_t n_masks,
                 const uint8_t nonce[12]) {
  constexpr std::size_t kWords = kTileBytes / sizeof(T);
  const std::ptrdiff_t tiles = static_cast<std::ptrdiff_t>((n + kWords - 1) / kWords);
  // One state per mask, built once.
  std::vector<uint32_t> states(16 * n_masks);
  for (std::size_t j = 0; j < n_masks; ++j) common::chacha20_init_state(keys + 32 * j, nonce, states.data() + 16 * j);
#pragma omp parallel for schedule(static) if (tiles > 64)
  for (std::ptrdiff_t t = 0; t < tiles; ++t) {
    alignas(32) T ks[kWords];
    const std::size_t begin = static_cast<std::size_t>(t) * kWords;
    const std::size_t len = std::min(kWords, n - begin);
    T* v = vec + begin;
    for (std::size_t j = 0; j < n_masks; ++j)
      mask_tile(states.data() + 16 * j, static_cast<uint32_t>(t * kLanes), signs[j], v, len, ks);
  }
}

template void apply_masks<uint32_t>(uint32_t*, std::size_t, const uint8_t*, const int8_t*, std::size_t,
                                    const uint8_t*);
template void apply_masks<uint64_t>(uint64_t*, std::size_t, const uint8_t*, const int8_t*, std::size_t,
                                    const uint8_t*);

template <typename T>
std::pair<int64_t, int64_t> quantize_and_mask(const float* x, T* out, std::size_t n, int frac_bits, uint64_t seed,
                                              const uint8_t* keys, const int8_t* signs, std::size_t n_masks,
                                              const uint8_t nonce[12]) {
  namespace fp = medfl::fixed_point;
  // Tiles of 16 KiB of ring words: encoded, then every mask's keystream added, while in L1/L2.
  constexpr std::size_t kWords = 16384 / sizeof(T);
  static_assert(kWords % (kTileBytes / sizeof(T)) == 0, "tile must hold whole keystream tiles");
  const std::ptrdiff_t tiles = static_cast<std::ptrdiff_t>((n + kWords - 1) / kWords);
  std::vector<uint32_t> states(16 * n_masks);
  for (std::size_t j = 0; j < n_masks; ++j) common::chacha20_init_state(keys + 32 * j, nonce, states.data() + 16 * j);
  int64_t first_nonfinite = static_cast<int64_t>(n), first_overflow = static_cast<int64_t>(n);
#pragma omp parallel for schedule(static) reduction(min : first_nonfinite, first_overflow) if (tiles > 4)
  for (std::ptrdiff_t t = 0; t < tiles; ++t) {
    const std::size_t begin = static_cast<std::size_t>(t) * kWords;
    const std::size_t len = std::min(kWords, n - begin);
    fp::Status st;
    if constexpr (sizeof(T) == 4) {
      st = fp::encode_cpu32(x + begin, out + begin, static_cast<int64_t>(len), frac_bits, true, seed, begin);
    } else {
      st = fp::encode_cpu64(x + begin, out + begin, static_cast<int64_t>(len), frac_bits, true, seed, begin);
    }
    if (st.code == fp::kNonFinite) first_nonfinite = std::min(first_nonfinite, static_cast<int64_t>(begin) + st.index);
    if (st.code == fp::kOverflow) first_overflow = std::min(first_overflow, static_cast<int64_t>(begin) + st.index);
    if (st.code != fp::kOk) continue;
    constexpr std::size_t kKsWords = kTileBytes / sizeof(T);
    alignas(32) T ks[kKsWords];
    for (std::size_t k = 0; k < len; k += kKsWords) {
      const std::size_t klen = std::min(kKsWords, len - k);
      const uint32_t block = static_cast<uint32_t>((begin + k) / kKsWords * kLanes);
      T* v = out + begin + k;
      for (std::size_t j = 0; j < n_masks; ++j) mask_tile(states.data() + 16 * j, block, signs[j], v, klen, ks);
    }
  }
  const fp::Status st = fp::make_status(first_nonfinite, first_overflow, static_cast<int64_t>(n));
  return {st.code, st.index};
}

template std::pair<int64_t, int64_t> quantize_and_mask<uint32_t>(const float*, uint32_t*, std::size_t, int, uint64_t,
                                                                 const uint8_t*, const int8_t*, std::size_t,
                                                                 const uint8_t*);
template std::pair<int64_t, int64_t> quantize_and_mask<uint64_t>(const float*, uint64_t*, std::size_t, int, uint64_t,
                                                                 const uint8_t*, const int8_t*, std::size_t,
                                                                 const uint8_t*);

}  // namespace medfl::secagg
