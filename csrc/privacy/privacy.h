// Kernels of DP-SGD's per-sample clipping (see medfl/native/clipping.py for the Python entry and
// the torch references each one is tested against).
//
//   row_sqnorms:   sq[b] = sum_j x[b, j]^2 for a (B, D) matrix of per-sample gradients, summed in
//                  double and returned in double (a float32 gradient of 1e20 has a finite norm).
//   clip_factors:  norms[b] = sqrt(sum_l sq[l, b]) over a (L, B) double matrix of per-layer squared
//                  norms, factors[b] = min(1, C / (norms[b] + 1e-6)) (Abadi et al. 2016); returns the
//                  number of non-finite norms (the caller refuses the step).
//   clipped_sum:   out[j] (+)= sum_b c[b] x[b, j], the clipped sum of per-sample gradients.
//   group_norm_affine: per-sample gradients of a GroupNorm's weight and bias from its input a and
//                  output gradient g, both (B, C, S): wg[b, c] = sum_s g * (a - mu_bk) * rstd_bk and
//                  bg[b, c] = sum_s g, with mu/rstd the statistics of channel c's group k in sample
//                  b (biased variance, rstd = 1/sqrt(var + eps), as torch.nn.GroupNorm), without
//                  materialising the normalised input.
//   gaussian_noise: out[i] = std * z_i, the standard normals of medfl/privacy/noise.py's
//                  _secure_normal: Box-Muller in double over the ChaCha20 stream of `key` (nonce and
//                  counter zero), 16 bytes per pair (u = (top 53 bits of each LE 64-bit word + 0.5) / 2^53);
//                  the cosines of the pairs fill out[0, pairs), the sines out[pairs, n).
//
// CPU kernels use OpenMP (threads given by the caller, torch's own thread count) and OpenMP SIMD;
// CUDA kernels run on the caller's stream.
#pragma once

#include <cstddef>
#include <cstdint>

namespace medfl::privacy {

template <typename T>
void row_sqnorms_cpu(const T* x, std::int64_t rows, std::int64_t cols, double* out, int threads);

std::int64_t clip_factors_cpu(const double* sq, std::int64_t layers, std::int64_t batch, double max_norm,
                              double* norms, double* factors);

template <typename T>
void clipped_sum_cpu(const T* x, const T* c, std::int64_t rows, std::int64_t cols, T* out, bool accumulate,
                     int threads);

// sq (optional, may be null): sq[b] = sum_c wg[b, c]^2 + bg[b, c]^2 in double, the layer's per-sample
// squared gradient norm, so the clipper needs no second pass.
template <typename T>
void group_norm_affine_cpu(const T* a, const T* g, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                           std::int64_t groups, double eps, T* wg, T* bg, double* sq, int threads);

template <typename T>
void gaussian_noise_cpu(const std::uint8_t key[32], T* out, std::int64_t n, double stddev, int threads);

#ifdef MEDFL_WITH_CUDA
// dtype: 0 = float32, 1 = float64. Pointers are device pointers; stream is a cudaStream_t.
void row_sqnorms_cuda(int dtype, const void* x, std::int64_t rows, std::int64_t cols, double* out, void* stream);
void clip_factors_cuda(const double* sq, std::int64_t layers, std::int64_t batch, double max_norm, double* norms,
                       double* factors, std::int32_t* nonfinite, void* stream);
void clipped_sum_cuda(int dtype, const void* x, const void* c, std::int64_t rows, std::int64_t cols, void* out,
                      bool accumulate, void* stream);
void group_norm_affine_cuda(int dtype, const void* a, const void* g, std::int64_t batch, std::int64_t channels,
                            std::int64_t spatial, std::int64_t groups, double eps, void* wg, void* bg, double* sq,
                            void* stream);
#endif

}  // namespace medfl::privacy
