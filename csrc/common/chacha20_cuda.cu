// The ChaCha20 keystream of RFC 8439 on the device (declared in chacha20.h): one thread per
// 64-byte block, on the caller's stream.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/chacha20.cuh"
#include "common/chacha20.h"
#include "common/cuda_check.cuh"

namespace medfl::common {
namespace {

struct State {
  uint32_t w[16];
};

__global__ void keystream_kernel(State st, uint32_t counter, uint8_t* out, uint64_t nbytes) {
  const uint64_t blocks = (nbytes + 63) / 64;
  const bool aligned = (reinterpret_cast<uintptr_t>(out) & 15) == 0;
  for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < blocks; b += (uint64_t)gridDim.x * blockDim.x) {
    uint32_t ks[16];
    chacha20_block(st.w, counter + static_cast<uint32_t>(b), ks);
    const uint64_t base = b * 64;
    if (aligned && nbytes - base >= 64) {
      uint4* o = reinterpret_cast<uint4*>(out + base);
#pragma unroll
      for (int q = 0; q < 4; ++q) o[q] = make_uint4(ks[4 * q], ks[4 * q + 1], ks[4 * q + 2], ks[4 * q + 3]);
    } else {
      const uint64_t len = nbytes - base < 64 ? nbytes - base : 64;
      const uint8_t* k8 = reinterpret_cast<const uint8_t*>(ks);
      for (uint64_t i = 0; i < len; ++i) out[base + i] = k8[i];
    }
  }
}

}  // namespace

void chacha20_keystream_cuda(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, void* out,
                             uint64_t nbytes, void* stream) {
  if (nbytes == 0) return;
  State st;
  chacha20_init_state(key, nonce, st.w);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = grid_for(static_cast<int64_t>((nbytes + 63) / 64), 256, 65535);  // 256-thread blocks
  keystream_kernel<<<grid, 256, 0, s>>>(st, counter, static_cast<uint8_t*>(out), nbytes);
  cuda_check(cudaGetLastError(), "chacha20_keystream_cuda");
}

}  // namespace medfl::common
