// CUDA discrete Gaussian noise (see ddg.h): one warp (kPassBlocks threads) per chunk; per
// pass each thread makes one ChaCha20 block in registers (4 candidates), a block-wide exclusive scan
// of the accept counts places the accepted values in candidate order, as the CPU kernel does.
#include "ddg/ddg.h"

#include <cuda_runtime.h>

#include <cstring>
#include <stdexcept>

#include "common/chacha20.cuh"
#include "common/cuda_check.cuh"

namespace medfl::ddg {
namespace {

constexpr int kThreads = static_cast<int>(kPassBlocks);

template <typename T>
__global__ void ddg_kernel(T* vec, uint64_t n, double t, double s2, double shift, const uint32_t* key_words,
                           int* failed) {
  __shared__ int scan[kThreads];
  __shared__ int filled_s;
  const uint64_t chunk = blockIdx.x;
  const uint64_t begin = chunk * kChunk;
  const uint64_t len = (n - begin) < kChunk ? (n - begin) : kChunk;
  const int tid = threadIdx.x;
  if (tid == 0) filled_s = 0;
  __syncthreads();
  uint32_t st[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};
  for (int w = 0; w < 8; ++w) st[4 + w] = key_words[w];
  st[12] = 0;
  st[13] = static_cast<uint32_t>(chunk);
  st[14] = static_cast<uint32_t>(chunk >> 32);
  for (uint32_t pass = 0; pass < kMaxPasses; ++pass) {
    const int filled = filled_s;
    if (static_cast<uint64_t>(filled) >= len) break;
    st[15] = pass;
    uint32_t out[16];
    common::chacha20_block(st, static_cast<uint32_t>(tid), out);
    int64_t ys[4];
    int acc = 0;
    bool ok[4];
    for (int c = 0; c < 4; ++c) {
      const uint64_t w0 = out[4 * c] | (static_cast<uint64_t>(out[4 * c + 1]) << 32);
      const uint64_t w1 = out[4 * c + 2] | (static_cast<uint64_t>(out[4 * c + 3]) << 32);
      const double u0 = (static_cast<double>(w0 >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      const double vd = floor(-t * log(u0));
      const bool neg = (w0 & 1u) != 0;
      const double d = vd - shift;
      const double u1 = (static_cast<double>(w1 >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      ok[c] = !(neg && vd == 0.0) && (u1 < exp(-(d * d) / (2.0 * s2)));
      const int64_t v = static_cast<int64_t>(vd);
      ys[c] = neg ? -v : v;
      acc += ok[c] ? 1 : 0;
    }
    scan[tid] = acc;
    __syncthreads();
    for (int off = 1; off < kThreads; off <<= 1) {  // inclusive Hillis-Steele scan
      const int add = tid >= off ? scan[tid - off] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    int pos = filled + scan[tid] - acc;
    for (int c = 0; c < 4; ++c) {
      if (ok[c]) {
        if (static_cast<uint64_t>(pos) < len) vec[begin + pos] += static_cast<T>(ys[c]);
        ++pos;
      }
    }
    __syncthreads();
    if (tid == kThreads - 1) filled_s = filled + scan[tid];
    __syncthreads();
  }
  if (tid == 0 && static_cast<uint64_t>(filled_s) < len) atomicExch(failed, 1);
}

}  // namespace

void add_discrete_gaussian_cuda(void* vec, int ring_bits, uint64_t n, double sigma, const uint8_t key[32],
                                void* stream) {
  if (n == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  uint32_t* key_dev = nullptr;
  int* failed = nullptr;
  common::cuda_check(cudaMallocAsync(&key_dev, 32 + sizeof(int), s), "add_discrete_gaussian_cuda");
  failed = reinterpret_cast<int*>(key_dev + 8);
  uint32_t host[9];
  std::memcpy(host, key, 32);
  host[8] = 0;
  common::cuda_check(cudaMemcpyAsync(key_dev, host, sizeof(host), cudaMemcpyHostToDevice, s), "add_discrete_gaussian_cuda");
  const double t = floor(sigma) + 1.0;
  const unsigned chunks = static_cast<unsigned>((n + kChunk - 1) / kChunk);
  if (ring_bits == 32)
    ddg_kernel<uint32_t><<<chunks, kThreads, 0, s>>>(static_cast<uint32_t*>(vec), n, t, sigma * sigma,
                                                       sigma * sigma / t, key_dev, failed);
  else
    ddg_kernel<uint64_t><<<chunks, kThreads, 0, s>>>(static_cast<uint64_t*>(vec), n, t, sigma * sigma,
                                                       sigma * sigma / t, key_dev, failed);
  common::cuda_check(cudaGetLastError(), "add_discrete_gaussian_cuda");
  int bad = 0;
  common::cuda_check(cudaMemcpyAsync(&bad, failed, sizeof(int), cudaMemcpyDeviceToHost, s), "add_discrete_gaussian_cuda");
  common::cuda_check(cudaFreeAsync(key_dev, s), "add_discrete_gaussian_cuda");
  common::cuda_check(cudaStreamSynchronize(s), "add_discrete_gaussian_cuda");
  if (bad) throw std::runtime_error("add_discrete_gaussian_cuda: a chunk ran out of passes");
}

}  // namespace medfl::ddg
