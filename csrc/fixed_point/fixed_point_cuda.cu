// CUDA fixed-point kernels, run on the caller's stream. Bit-identical to the CPU kernels:
// the same double-precision operations, no fused multiply-add (--fmad=false).
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_check.cuh"
#include "fixed_point/fixed_point.h"

namespace medfl {
namespace fixed_point {
namespace {

using common::cuda_check;

// first_bad[0]: first non-finite index, first_bad[1]: first out-of-range index (n = none).
template <typename U>
__global__ void encode_kernel(const float* x, U* out, int64_t n, double scale, double lim, bool stochastic,
                              uint64_t seed, uint64_t offset, unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float xi = x[i];
    const double y = __dmul_rn(static_cast<double>(xi), scale);
    double r;
    if (stochastic) {
      r = floor(y);
      r += (uniform53(seed, offset, static_cast<uint64_t>(i)) < __dsub_rn(y, r)) ? 1.0 : 0.0;
    } else {
      r = rint(y);
    }
    const bool inside = r >= -lim && r < lim;  // false for NaN
    if (!isfinite(xi)) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    } else if (!inside) {
      atomicMin(first_bad + 1, static_cast<unsigned long long>(i));
    }
    out[i] = inside ? static_cast<U>(static_cast<uint64_t>(static_cast<int64_t>(r))) : U(0);
  }
}

template <typename U, typename S>
__global__ void decode_kernel(const U* v, float* out, int64_t n, double inv) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = static_cast<float>(__dmul_rn(static_cast<double>(static_cast<int64_t>(static_cast<S>(v[i]))), inv));
  }
}

template <typename U>
__global__ void ring_sum_kernel(const U* rows, U* out, int64_t m, int64_t n) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    U acc = 0;
    for (int64_t r = 0; r < m; ++r) acc = static_cast<U>(acc + rows[r * n + j]);
    out[j] = acc;
  }
}

template <typename U>
__global__ void ring_add_kernel(U* acc, const U* v, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    acc[i] = static_cast<U>(acc[i] + v[i]);
  }
}

// 256-thread blocks over n items, at most 65535 * 8 blocks.
unsigned grid_for(int64_t n) { return common::grid_for(n, 256, 65535 * 8); }

}  // namespace

Status encode_cuda(const float* x, void* out, int ring_bits, int64_t n, int frac_bits, bool stochastic,
                   uint64_t seed, uint64_t offset, void* stream_ptr) {
  if (n == 0) return Status{kOk, -1};
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  unsigned long long* bad = nullptr;
  cuda_check(cudaMallocAsync(reinterpret_cast<void**>(&bad), 2 * sizeof(unsigned long long), stream), "cudaMallocAsync");
  unsigned long long host_bad[2] = {static_cast<unsigned long long>(n), static_cast<unsigned long long>(n)};
  cuda_check(cudaMemcpyAsync(bad, host_bad, sizeof(host_bad), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  const double scale = ldexp(1.0, frac_bits);
  const double lim = ldexp(1.0, ring_bits - 1);
  if (ring_bits == 32) {
    encode_kernel<uint32_t><<<grid_for(n), 256, 0, stream>>>(x, static_cast<uint32_t*>(out), n, scale, lim,
                                                             stochastic, seed, offset, bad);
  } else {
    encode_kernel<uint64_t><<<grid_for(n), 256, 0, stream>>>(x, static_cast<uint64_t*>(out), n, scale, lim,
                                                             stochastic, seed, offset, bad);
  }
  const cudaError_t launch = cudaGetLastError();
  cuda_check(cudaMemcpyAsync(host_bad, bad, sizeof(host_bad), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  cuda_check(cudaFreeAsync(bad, stream), "cudaFreeAsync");
  cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  cuda_check(launch, "encode kernel launch");
  return make_status(static_cast<int64_t>(host_bad[0]), static_cast<int64_t>(host_bad[1]), n);
}

void decode_cuda(const void* v, int ring_bits, float* out, int64_t n, int frac_bits, void* stream_ptr) {
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const double inv = ldexp(1.0, -frac_bits);
  if (ring_bits == 32) {
    decode_kernel<uint32_t, int32_t><<<grid_for(n), 256, 0, stream>>>(static_cast<const uint32_t*>(v), out, n, inv);
  } else {
    decode_kernel<uint64_t, int64_t><<<grid_for(n), 256, 0, stream>>>(static_cast<const uint64_t*>(v), out, n, inv);
  }
  cuda_check(cudaGetLastError(), "decode kernel launch");
}

void ring_sum_cuda(const void* rows, void* out, int ring_bits, int64_t m, int64_t n, void* stream_ptr) {
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (ring_bits == 32) {
    ring_sum_kernel<uint32_t><<<grid_for(n), 256, 0, stream>>>(static_cast<const uint32_t*>(rows),
                                                               static_cast<uint32_t*>(out), m, n);
  } else {
    ring_sum_kernel<uint64_t><<<grid_for(n), 256, 0, stream>>>(static_cast<const uint64_t*>(rows),
                                                               static_cast<uint64_t*>(out), m, n);
  }
  cuda_check(cudaGetLastError(), "ring_sum kernel launch");
}

void ring_add_cuda(void* acc, const void* v, int ring_bits, int64_t n, void* stream_ptr) {
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (ring_bits == 32) {
    ring_add_kernel<uint32_t><<<grid_for(n), 256, 0, stream>>>(static_cast<uint32_t*>(acc),
                                                               static_cast<const uint32_t*>(v), n);
  } else {
    ring_add_kernel<uint64_t><<<grid_for(n), 256, 0, stream>>>(static_cast<uint64_t*>(acc),
                                                               static_cast<const uint64_t*>(v), n);
  }
  cuda_check(cudaGetLastError(), "ring_add kernel launch");
}

}  // namespace fixed_point
}  // namespace medfl
