// The discrete Gaussian noise kernel of client-level DP (medfl/privacy/distributed_dp.py): add
// N_Z(0, sigma^2) samples to a ring vector in place, wrapping mod 2^k, before the masks go on.
//
// Sampler: Canonne, Kamath and Steinke 2020, algorithm 3 (a discrete Laplace proposal of scale
// t = floor(sigma) + 1, accepted with probability exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2))),
// in double precision over the ChaCha20 stream of a fresh 32-byte key.
//
// Stream layout (the NumPy reference medfl/native/reference/ddg.py and the CUDA kernel follow it):
//   the vector is cut into chunks of kChunk elements; chunk c reads passes p = 0, 1, ... of
//   kPassBlocks ChaCha20 blocks each: key, nonce = (c as 64-bit LE, p as 32-bit LE), counters
//   0 .. kPassBlocks - 1. The pass bytes are read as little-endian 64-bit words, two per candidate
//   (w0, w1): b = w0 & 1, u0 = ((w0 >> 11) + 0.5) / 2^53, v = floor(-t ln u0); the candidate is
//   rejected if b = 1 and v = 0, else y = b ? -v : v, accepted when
//   u1 = ((w1 >> 11) + 0.5) / 2^53 < exp(-(v - sigma^2 / t)^2 / (2 sigma^2)).
//   Element j of chunk c gets the j-th accepted candidate of the chunk's passes in order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace medfl::ddg {

constexpr std::size_t kChunk = 1024;      // elements per chunk
constexpr std::size_t kPassBlocks = 32;  // ChaCha20 blocks per pass (128 candidates)
constexpr std::uint32_t kMaxPasses = 1u << 16;

// vec[i] += (T) y_i (wrapping). Returns 0, or -1 when a chunk ran out of passes (never for
// sigma >= 0.5 in practice: the acceptance rate is above 0.3).
template <typename T>
int add_discrete_gaussian_cpu(T* vec, std::size_t n, double sigma, const std::uint8_t key[32], int threads);

#ifdef MEDFL_WITH_CUDA
// The same numbers on the device (vec a device pointer), on the caller's stream (up to the last
// ulp of the device's log/exp); ring_bits 32 or 64.
void add_discrete_gaussian_cuda(void* vec, int ring_bits, std::uint64_t n, double sigma, const std::uint8_t key[32],
                                void* stream);
#endif

}  // namespace medfl::ddg
