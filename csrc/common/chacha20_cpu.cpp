// The ChaCha20 block function of RFC 8439 on the CPU (declared in chacha20.h), computed on 8
// blocks at once in plain lane arrays the compiler vectorises (SSE2 baseline, an AVX2 clone
// chosen at run time), and the keystream with OpenMP across tiles of blocks.
#include "common/chacha20.h"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace medfl::common {
namespace {

constexpr int kLanes = kChachaLanes;              // blocks computed together
constexpr std::size_t kTileBytes = kChachaTileBytes;  // keystream bytes per tile

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the ChaCha20 kernels assume a little-endian host");

inline uint32_t rotl(uint32_t v, int c) { return (v << c) | (v >> (32 - c)); }

#define MEDFL_QR(a, b, c, d)                                   \
  for (int l = 0; l < kLanes; ++l) {                           \
    x[a][l] += x[b][l]; x[d][l] = rotl(x[d][l] ^ x[a][l], 16); \
    x[c][l] += x[d][l]; x[b][l] = rotl(x[b][l] ^ x[c][l], 12); \
    x[a][l] += x[b][l]; x[d][l] = rotl(x[d][l] ^ x[a][l], 8);  \
    x[c][l] += x[d][l]; x[b][l] = rotl(x[b][l] ^ x[c][l], 7);  \
  }

// kLanes consecutive blocks starting at block counter `counter` (section 2.3: constants, key,
// counter, nonce; 20 rounds as 10 column + diagonal double rounds; add the input state), written
// as 64 * kLanes bytes to out. Counters are computed mod 2^32; callers guarantee no wrap is used.
// Portable version: lane arrays the compiler vectorises with the baseline ISA (SSE2 on x86-64).
void blocks8_portable(const uint32_t in[16], uint32_t counter, uint8_t* out) {
  alignas(32) uint32_t x[16][kLanes];
  alignas(32) uint32_t s[16][kLanes];
  for (int w = 0; w < 16; ++w)
    for (int l = 0; l < kLanes; ++l) s[w][l] = in[w];
  for (int l = 0; l < kLanes; ++l) s[12][l] = counter + static_cast<uint32_t>(l);
  std::memcpy(x, s, sizeof x);
  for (int r = 0; r < 10; ++r) {
    MEDFL_QR(0, 4, 8, 12) MEDFL_QR(1, 5, 9, 13) MEDFL_QR(2, 6, 10, 14) MEDFL_QR(3, 7, 11, 15)
    MEDFL_QR(0, 5, 10, 15) MEDFL_QR(1, 6, 11, 12) MEDFL_QR(2, 7, 8, 13) MEDFL_QR(3, 4, 9, 14)
  }
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  for (int l = 0; l < kLanes; ++l)
    for (int w = 0; w < 16; ++w) {
      uint32_t v = x[w][l] + s[w][l];
      std::memcpy(o + 16 * l + w, &v, 4);
    }
}
#undef MEDFL_QR

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2 version: word w of the 8 blocks is one 256-bit register; rotations by 16 and 8 are byte
// shuffles. Chosen at run time when the CPU has AVX2 (the wheel stays baseline x86-64).
__attribute__((target("avx2"))) void blocks8_avx2(const uint32_t in[16], uint32_t counter, uint8_t* out) {
  __m256i x[16], s[16];
  for (int w = 0; w < 16; ++w) s[w] = _mm256_set1_epi32(static_cast<int>(in[w]));
  s[12] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(counter)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int w = 0; w < 16; ++w) x[w] = s[w];
  const __m256i r16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10,
                                       11, 8, 9, 14, 15, 12, 13);
  const __m256i r8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11,
                                      8, 9, 10, 15, 12, 13, 14);
#define MEDFL_QRV(a, b, c, d)                                                                    \
  x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r16); \
  x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]);                          \
  x[b] = _mm256_or_si256(_mm256_slli_epi32(x[b], 12), _mm256_srli_epi32(x[b], 20));                  \
  x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r8);  \
  x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]);                          \
  x[b] = _mm256_or_si256(_mm256_slli_epi32(x[b], 7), _mm256_srli_epi32(x[b], 25));

  for (int r = 0; r < 10; ++r) {
    MEDFL_QRV(0, 4, 8, 12) MEDFL_QRV(1, 5, 9, 13) MEDFL_QRV(2, 6, 10, 14) MEDFL_QRV(3, 7, 11, 15)
    MEDFL_QRV(0, 5, 10, 15) MEDFL_QRV(1, 6, 11, 12) MEDFL_QRV(2, 7, 8, 13) MEDFL_QRV(3, 4, 9, 14)
  }
#undef MEDFL_QRV
  // x[w] holds word w of the 8 blocks; each block's 16 words are contiguous in the output. Two
  // 8x8 transposes of 32-bit words in registers (words 0-7 and 8-15) give each block as two
  // 256-bit rows: no scalar pass over the tile.
  for (int w = 0; w < 16; ++w) x[w] = _mm256_add_epi32(x[w], s[w]);
  for (int half = 0; half < 2; ++half) {
    const __m256i* r = x + 8 * half;
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    // u0-u3: this half's words 0-3 of blocks k (low 128 bits) and k + 4 (high); u4-u7: words 4-7
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    __m256i* o = reinterpret_cast<__m256i*>(out) + half;  // row i: bytes 32i..32i+31 of the tile
    _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u4, 0x20));
    _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u1, u5, 0x20));
    _mm256_storeu_si256(o + 4, _mm256_permute2x128_si256(u2, u6, 0x20));
    _mm256_storeu_si256(o + 6, _mm256_permute2x128_si256(u3, u7, 0x20));
    _mm256_storeu_si256(o + 8, _mm256_permute2x128_si256(u0, u4, 0x31));
    _mm256_storeu_si256(o + 10, _mm256_permute2x128_si256(u1, u5, 0x31));
    _mm256_storeu_si256(o + 12, _mm256_permute2x128_si256(u2, u6, 0x31));
    _mm256_storeu_si256(o + 14, _mm256_permute2x128_si256(u3, u7, 0x31));
  }
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");

inline void blocks8(const uint32_t in[16], uint32_t counter, uint8_t* out) {
  if (kHaveAvx2) {
    blocks8_avx2(in, counter, out);
  } else {
    blocks8_portable(in, counter, out);
  }
}
#else
inline void blocks8(const uint32_t in[16], uint32_t counter, uint8_t* out) { blocks8_portable(in, counter, out); }
#endif

}  // namespace

void chacha20_tile(const uint32_t st[16], uint32_t counter, uint8_t* out) { blocks8(st, counter, out); }

void chacha20_keystream(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, uint8_t* out,
                        std::size_t nbytes) {
  uint32_t st[16];
  chacha20_init_state(key, nonce, st);
  const std::ptrdiff_t tiles = static_cast<std::ptrdiff_t>(nbytes / kTileBytes);
#pragma omp parallel for schedule(static) if (tiles > 256)
  for (std::ptrdiff_t t = 0; t < tiles; ++t)
    blocks8(st, counter + static_cast<uint32_t>(t * kLanes), out + t * kTileBytes);
  const std::size_t done = static_cast<std::size_t>(tiles) * kTileBytes;
  if (done < nbytes) {
    alignas(32) uint8_t tail[kTileBytes];
    blocks8(st, counter + static_cast<uint32_t>(tiles * kLanes), tail);
    std::memcpy(out + done, tail, nbytes - done);
  }
}

}  // namespace medfl::common
