// CUDA kernels of per-sample clipping on the caller's stream (declared and described in privacy.h).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>

#include "common/cuda_check.cuh"
#include "privacy/privacy.h"

namespace medfl::privacy {
namespace {

constexpr int kThreads = 256;

using common::cuda_check;

// Sum of v over the block (every thread gets the result); kThreads threads, 8 warps.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  __shared__ double total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const double r = total;
  __syncthreads();  // warp_sums/total may be reused by the next call
  return r;
}

// grid (chunks, rows): each block adds the squares of one chunk of one row into out[row].
template <typename T>
__global__ void row_sqnorms_kernel(const T* __restrict__ x, std::int64_t cols, std::int64_t chunk,
                                   double* __restrict__ out) {
  const std::int64_t r = blockIdx.y;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * chunk;
  const std::int64_t j1 = min(cols, j0 + chunk);
  const T* xr = x + r * cols;
  double acc = 0.0;
  for (std::int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const double v = static_cast<double>(xr[j]);
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out + r, acc);
}

__global__ void clip_factors_kernel(const double* __restrict__ sq, std::int64_t layers, std::int64_t batch,
                                    double max_norm, double* __restrict__ norms, double* __restrict__ factors,
                                    std::int32_t* __restrict__ nonfinite) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double acc = 0.0;
  for (std::int64_t l = 0; l < layers; ++l) acc += sq[l * batch + b];
  const double n = sqrt(acc);
  norms[b] = n;
  if (!isfinite(n)) {
    factors[b] = 0.0;
    atomicAdd(nonfinite, 1);
  } else {
    factors[b] = fmin(1.0, max_norm / (n + 1e-6));
  }
}

template <typename T>
__global__ void clipped_sum_kernel(const T* __restrict__ x, const T* __restrict__ c, std::int64_t rows,
                                   std::int64_t cols, T* __restrict__ out, bool accumulate) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols; j += stride) {
    T acc = accumulate ? out[j] : T(0);
    for (std::int64_t r = 0; r < rows; ++r) acc += c[r] * x[r * cols + j];
    out[j] = acc;
  }
}

// One block per (sample, group).
template <typename T>
__global__ void group_norm_affine_kernel(const T* __restrict__ a, const T* __restrict__ g, std::int64_t channels,
                                         std::int64_t spatial, std::int64_t groups, double eps, T* __restrict__ wg,
                                         T* __restrict__ bg, double* __restrict__ sq) {
  const std::int64_t b = blockIdx.x / groups, k = blockIdx.x % groups;
  const std::int64_t per = channels / groups, n = per * spatial;
  const std::int64_t off = (b * channels + k * per) * spatial;
  const T* ap = a + off;
  const T* gp = g + off;
  double s = 0.0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(ap[i]);
  const double mu = block_sum(s) / static_cast<double>(n);
  double v = 0.0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = static_cast<double>(ap[i]) - mu;
    v += d * d;
  }
  const double rstd = rsqrt(block_sum(v) / static_cast<double>(n) + eps);
  for (std::int64_t c = 0; c < per; ++c) {
    double sw = 0.0, sb = 0.0;
    for (std::int64_t i = threadIdx.x; i < spatial; i += blockDim.x) {
      const double gi = static_cast<double>(gp[c * spatial + i]);
      sw += gi * (static_cast<double>(ap[c * spatial + i]) - mu);
      sb += gi;
    }
    sw = block_sum(sw);
    sb = block_sum(sb);
    if (threadIdx.x == 0) {
      const T w = static_cast<T>(sw * rstd), v = static_cast<T>(sb);
      wg[b * channels + k * per + c] = w;
      bg[b * channels + k * per + c] = v;
      if (sq != nullptr)
        atomicAdd(sq + b, static_cast<double>(w) * static_cast<double>(w) + static_cast<double>(v) * static_cast<double>(v));
    }
  }
}

// kThreads-thread blocks over n items, at most 65535 * 4 blocks.
unsigned grid_for(std::int64_t n) { return common::grid_for(n, kThreads, 65535 * 4); }

}  // namespace

void row_sqnorms_cuda(int dtype, const void* x, std::int64_t rows, std::int64_t cols, double* out, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (rows == 0) return;
  cuda_check(cudaMemsetAsync(out, 0, static_cast<std::size_t>(rows) * sizeof(double), s), "row_sqnorms memset");
  if (cols == 0) return;
  if (rows > 65535) throw std::invalid_argument("row_sqnorms_cuda: more than 65535 rows");
  const std::int64_t chunk = 16 * kThreads;
  const dim3 grid(static_cast<unsigned>((cols + chunk - 1) / chunk), static_cast<unsigned>(rows));
  if (dtype == 0)
    row_sqnorms_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(x), cols, chunk, out);
  else
    row_sqnorms_kernel<double><<<grid, kThreads, 0, s>>>(static_cast<const double*>(x), cols, chunk, out);
  cuda_check(cudaGetLastError(), "row_sqnorms kernel launch");
}

void clip_factors_cuda(const double* sq, std::int64_t layers, std::int64_t batch, double max_norm, double* norms,
                       double* factors, std::int32_t* nonfinite, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  cuda_check(cudaMemsetAsync(nonfinite, 0, sizeof(std::int32_t), s), "clip_factors memset");
  if (batch == 0) return;
  clip_factors_kernel<<<grid_for(batch), kThreads, 0, s>>>(sq, layers, batch, max_norm, norms, factors, nonfinite);
  cuda_check(cudaGetLastError(), "clip_factors kernel launch");
}

void clipped_sum_cuda(int dtype, const void* x, const void* c, std::int64_t rows, std::int64_t cols, void* out,
                      bool accumulate, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (cols == 0) return;
  if (dtype == 0)
    clipped_sum_kernel<float><<<grid_for(cols), kThreads, 0, s>>>(
        static_cast<const float*>(x), static_cast<const float*>(c), rows, cols, static_cast<float*>(out), accumulate);
  else
    clipped_sum_kernel<double><<<grid_for(cols), kThreads, 0, s>>>(static_cast<const double*>(x),
                                                                   static_cast<const double*>(c), rows, cols,
                                                                   static_cast<double*>(out), accumulate);
  cuda_check(cudaGetLastError(), "clipped_sum kernel launch");
}

void group_norm_affine_cuda(int dtype, const void* a, const void* g, std::int64_t batch, std::int64_t channels,
                            std::int64_t spatial, std::int64_t groups, double eps, void* wg, void* bg, double* sq,
                            void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const std::int64_t blocks = batch * groups;
  if (sq != nullptr && batch > 0)
    cuda_check(cudaMemsetAsync(sq, 0, static_cast<std::size_t>(batch) * sizeof(double), s), "group_norm_affine memset");
  if (blocks == 0) return;
  if (blocks > 2147483647LL) throw std::invalid_argument("group_norm_affine_cuda: too many (sample, group) pairs");
  if (dtype == 0)
    group_norm_affine_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
        static_cast<const float*>(a), static_cast<const float*>(g), channels, spatial, groups, eps,
        static_cast<float*>(wg), static_cast<float*>(bg), sq);
  else
    group_norm_affine_kernel<double><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
        static_cast<const double*>(a), static_cast<const double*>(g), channels, spatial, groups, eps,
        static_cast<double*>(wg), static_cast<double*>(bg), sq);
  cuda_check(cudaGetLastError(), "group_norm_affine kernel launch");
}

}  // namespace medfl::privacy
