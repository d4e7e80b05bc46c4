// The ChaCha20 block function of RFC 8439 on the device, one block per call in registers (used by
// the CUDA keystream in chacha20_cuda.cu and the secagg masking kernels).
#pragma once

#include <cstdint>

namespace medfl::common {

__device__ __forceinline__ uint32_t chacha20_rotl(uint32_t v, int c) { return (v << c) | (v >> (32 - c)); }

#define MEDFL_QRD(a, b, c, d)                         \
  x[a] += x[b]; x[d] = chacha20_rotl(x[d] ^ x[a], 16); \
  x[c] += x[d]; x[b] = chacha20_rotl(x[b] ^ x[c], 12); \
  x[a] += x[b]; x[d] = chacha20_rotl(x[d] ^ x[a], 8);  \
  x[c] += x[d]; x[b] = chacha20_rotl(x[b] ^ x[c], 7);

// One block of RFC 8439 section 2.3: st holds the 16-word input with word 12 = block counter.
__device__ __forceinline__ void chacha20_block(const uint32_t* st, uint32_t counter, uint32_t out[16]) {
  uint32_t x[16];
#pragma unroll
  for (int w = 0; w < 16; ++w) x[w] = st[w];
  x[12] = counter;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    MEDFL_QRD(0, 4, 8, 12) MEDFL_QRD(1, 5, 9, 13) MEDFL_QRD(2, 6, 10, 14) MEDFL_QRD(3, 7, 11, 15)
    MEDFL_QRD(0, 5, 10, 15) MEDFL_QRD(1, 6, 11, 12) MEDFL_QRD(2, 7, 8, 13) MEDFL_QRD(3, 4, 9, 14)
  }
#pragma unroll
  for (int w = 0; w < 16; ++w) out[w] = x[w] + (w == 12 ? counter : st[w]);
}
#undef MEDFL_QRD

}  // namespace medfl::common
