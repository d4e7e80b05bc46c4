// CUDA kernels of secure aggregation on the caller's stream: the in-place masking of a ring
// vector (one thread per 64-byte block of the vector, every mask's ChaCha20 keystream block
// generated in registers by csrc/common/chacha20.cuh and added) and the fused quantize + mask.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "common/chacha20.cuh"
#include "common/chacha20.h"
#include "common/cuda_check.cuh"
#include "fixed_point/fixed_point.h"
#include "secagg/secagg.h"

namespace medfl::secagg {
namespace {

using common::chacha20_block;
using common::cuda_check;

// Adds (sign > 0) or subtracts one 64-byte keystream block, viewed as 64 / sizeof(T) ring words,
// to acc. Little-endian words, as the host kernels and the reference read the keystream.
template <typename T>
__device__ __forceinline__ void accumulate(T (&acc)[64 / sizeof(T)], const uint32_t (&ks)[16], bool add) {
  constexpr int kWords = 64 / sizeof(T);
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    T w;
    if constexpr (sizeof(T) == 4) {
      w = ks[i];
    } else {
      w = static_cast<T>(ks[2 * i]) | (static_cast<T>(ks[2 * i + 1]) << 32);
    }
    acc[i] = add ? acc[i] + w : acc[i] - w;
  }
}

// Copies the mask states and signs into the block's shared memory (states first, then signs);
// returns where the signs are.
__device__ __forceinline__ const int8_t* stage_in_shared(uint32_t* smem, const uint32_t* states, const int8_t* signs,
                                                         int n_masks) {
  int8_t* ssigns = reinterpret_cast<int8_t*>(smem + 16 * n_masks);
  for (int i = threadIdx.x; i < 16 * n_masks; i += blockDim.x) smem[i] = states[i];
  for (int i = threadIdx.x; i < n_masks; i += blockDim.x) ssigns[i] = signs[i];
  __syncthreads();
  return ssigns;
}

// Adds every mask's keystream block b to the tile acc, then stores the tile at dst + base: four
// 16-byte stores when the tile is full and aligned, word by word (within n) otherwise.
template <typename T>
__device__ __forceinline__ void add_masks_and_store(T (&acc)[64 / sizeof(T)], T* dst, uint64_t base, uint64_t n,
                                                    bool full, const uint32_t* smem, const int8_t* ssigns,
                                                    int n_masks, uint64_t b) {
  constexpr int kWords = 64 / sizeof(T);
  for (int j = 0; j < n_masks; ++j) {
    uint32_t ks[16];
    chacha20_block(smem + 16 * j, static_cast<uint32_t>(b), ks);
    accumulate<T>(acc, ks, ssigns[j] > 0);
  }
  if (full) {
    uint4* d = reinterpret_cast<uint4*>(dst + base);
#pragma unroll
    for (int q = 0; q < 4; ++q) d[q] = reinterpret_cast<const uint4*>(acc)[q];
  } else {
#pragma unroll
    for (int i = 0; i < kWords; ++i)
      if (base + i < n) dst[base + i] = acc[i];
  }
}

// One thread per 64-byte block of the vector; the mask states sit in shared memory. Full,
// 16-byte aligned blocks move as four 16-byte loads and stores; the tail goes word by word.
template <typename T>
__global__ void masks_kernel(T* vec, uint64_t n, const uint32_t* states, const int8_t* signs, int n_masks) {
  constexpr int kWords = 64 / sizeof(T);
  extern __shared__ uint32_t smem[];
  const int8_t* ssigns = stage_in_shared(smem, states, signs, n_masks);
  const uint64_t blocks = (n + kWords - 1) / kWords;
  const bool aligned = (reinterpret_cast<uintptr_t>(vec) & 15) == 0;
  for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < blocks; b += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t base = b * kWords;
    const bool full = aligned && n - base >= static_cast<uint64_t>(kWords);
    T acc[kWords];
    if (full) {
      const uint4* src = reinterpret_cast<const uint4*>(vec + base);
#pragma unroll
      for (int q = 0; q < 4; ++q) reinterpret_cast<uint4*>(acc)[q] = src[q];
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) acc[i] = base + i < n ? vec[base + i] : T(0);
    }
    add_masks_and_store<T>(acc, vec, base, n, full, smem, ssigns, n_masks, b);
  }
}

// Fused quantize + mask: one thread per 64-byte block of the output; the stochastic encode of
// fixed_point/fixed_point.h (uniforms indexed by the flat position, offset 0) then every mask.
// bad[0] / bad[1]: first non-finite / out-of-range index (n = none); out is garbage unless both stay n.
template <typename T>
__global__ void quantize_masks_kernel(const float* x, T* out, uint64_t n, double scale, double lim, uint64_t seed,
                                      const uint32_t* states, const int8_t* signs, int n_masks,
                                      unsigned long long* bad) {
  constexpr int kWords = 64 / sizeof(T);
  extern __shared__ uint32_t smem[];
  const int8_t* ssigns = stage_in_shared(smem, states, signs, n_masks);
  const uint64_t blocks = (n + kWords - 1) / kWords;
  const bool aligned = ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < blocks; b += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t base = b * kWords;
    const bool full = aligned && n - base >= static_cast<uint64_t>(kWords);
    float xs[kWords];
    if (full) {
      const uint4* src = reinterpret_cast<const uint4*>(x + base);
#pragma unroll
      for (int q = 0; q < kWords / 4; ++q) reinterpret_cast<uint4*>(xs)[q] = src[q];
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) xs[i] = base + i < n ? x[base + i] : 0.0f;
    }
    T acc[kWords];
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      const float xi = xs[i];
      const double y = __dmul_rn(static_cast<double>(xi), scale);
      double r = floor(y);
      r += (fixed_point::uniform53(seed, 0, base + i) < __dsub_rn(y, r)) ? 1.0 : 0.0;
      const bool inside = r >= -lim && r < lim;  // false for NaN
      if (base + i < n) {
        if (!isfinite(xi)) {
          atomicMin(bad, static_cast<unsigned long long>(base + i));
        } else if (!inside) {
          atomicMin(bad + 1, static_cast<unsigned long long>(base + i));
        }
      }
      acc[i] = inside ? static_cast<T>(static_cast<uint64_t>(static_cast<int64_t>(r))) : T(0);
    }
    add_masks_and_store<T>(acc, out, base, n, full, smem, ssigns, n_masks, b);
  }
}

// Host image of the kernels' parameter block: [head | one 64-byte ChaCha20 state per mask | signs],
// with `head` bytes left for the caller (zeros).
std::string stage_masks(std::size_t head, const uint8_t* keys, const int8_t* signs, std::size_t n_masks,
                        const uint8_t nonce[12]) {
  std::string host(head + 64 * n_masks + n_masks, '\0');
  for (std::size_t j = 0; j < n_masks; ++j)
    common::chacha20_init_state(keys + 32 * j, nonce, reinterpret_cast<uint32_t*>(&host[head + 64 * j]));
  if (n_masks) std::memcpy(&host[head + 64 * n_masks], signs, n_masks);
  return host;
}

// 256-thread blocks over `work` 64-byte blocks, at most 65535 blocks.
unsigned grid_for(uint64_t work) { return common::grid_for(static_cast<int64_t>(work), 256, 65535); }

}  // namespace

void apply_masks_cuda(void* vec, int ring_bits, uint64_t n, const uint8_t* keys, const int8_t* signs,
                      std::size_t n_masks, const uint8_t nonce[12], void* stream) {
  if (n == 0 || n_masks == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const std::size_t st_bytes = 64 * n_masks;
  const std::string host = stage_masks(0, keys, signs, n_masks, nonce);
  void* dev = nullptr;
  cuda_check(cudaMallocAsync(&dev, host.size(), s), "apply_masks_cuda: cudaMallocAsync");
  cuda_check(cudaMemcpyAsync(dev, host.data(), host.size(), cudaMemcpyHostToDevice, s), "apply_masks_cuda: copy");
  const auto* states = static_cast<const uint32_t*>(dev);
  const auto* dsigns = reinterpret_cast<const int8_t*>(static_cast<uint8_t*>(dev) + st_bytes);
  const std::size_t smem = 64 * n_masks + n_masks;
  if (ring_bits == 32) {
    masks_kernel<uint32_t><<<grid_for((n + 15) / 16), 256, smem, s>>>(static_cast<uint32_t*>(vec), n, states, dsigns,
                                                                     static_cast<int>(n_masks));
  } else {
    masks_kernel<uint64_t><<<grid_for((n + 7) / 8), 256, smem, s>>>(static_cast<uint64_t*>(vec), n, states, dsigns,
                                                                   static_cast<int>(n_masks));
  }
  cuda_check(cudaGetLastError(), "apply_masks_cuda");
  // The host staging buffer must outlive the pageable copy (which has completed on return for
  // pageable memory); free the device buffer in stream order.
  cuda_check(cudaFreeAsync(dev, s), "apply_masks_cuda: cudaFreeAsync");
}

std::pair<int64_t, int64_t> quantize_and_mask_cuda(const float* x, void* out, int ring_bits, uint64_t n,
                                                   int frac_bits, uint64_t seed, const uint8_t* keys,
                                                   const int8_t* signs, std::size_t n_masks,
                                                   const uint8_t nonce[12], void* stream) {
  if (n == 0) return {fixed_point::kOk, -1};
  auto s = static_cast<cudaStream_t>(stream);
  // One device buffer, one copy in: [bad[2] | mask states (64 B each) | signs].
  const std::size_t head = 2 * sizeof(unsigned long long);
  std::string host = stage_masks(head, keys, signs, n_masks, nonce);
  const std::size_t total = host.size();
  const unsigned long long none[2] = {n, n};
  std::memcpy(&host[0], none, head);
  void* dev = nullptr;
  cuda_check(cudaMallocAsync(&dev, total, s), "quantize_and_mask_cuda: cudaMallocAsync");
  cuda_check(cudaMemcpyAsync(dev, host.data(), total, cudaMemcpyHostToDevice, s), "quantize_and_mask_cuda: copy in");
  auto* bad = static_cast<unsigned long long*>(dev);
  const auto* states = reinterpret_cast<const uint32_t*>(static_cast<uint8_t*>(dev) + head);
  const auto* dsigns = reinterpret_cast<const int8_t*>(static_cast<uint8_t*>(dev) + head + 64 * n_masks);
  const double scale = ldexp(1.0, frac_bits);
  const double lim = ldexp(1.0, ring_bits - 1);
  const std::size_t smem = 64 * n_masks + n_masks;
  const int m = static_cast<int>(n_masks);
  if (ring_bits == 32) {
    quantize_masks_kernel<uint32_t><<<grid_for((n + 15) / 16), 256, smem, s>>>(
        x, static_cast<uint32_t*>(out), n, scale, lim, seed, states, dsigns, m, bad);
  } else {
    quantize_masks_kernel<uint64_t><<<grid_for((n + 7) / 8), 256, smem, s>>>(
        x, static_cast<uint64_t*>(out), n, scale, lim, seed, states, dsigns, m, bad);
  }
  const cudaError_t launch = cudaGetLastError();
  unsigned long long found[2] = {n, n};
  cuda_check(cudaMemcpyAsync(found, bad, head, cudaMemcpyDeviceToHost, s), "quantize_and_mask_cuda: copy out");
  cuda_check(cudaFreeAsync(dev, s), "quantize_and_mask_cuda: cudaFreeAsync");
  cuda_check(cudaStreamSynchronize(s), "quantize_and_mask_cuda: cudaStreamSynchronize");
  cuda_check(launch, "quantize_and_mask_cuda: launch");
  const auto st = fixed_point::make_status(static_cast<int64_t>(found[0]), static_cast<int64_t>(found[1]),
                                           static_cast<int64_t>(n));
  return {st.code, st.index};
}

}  // namespace medfl::secagg
