// The secagg masking kernels: a ring vector plus or minus the ChaCha20 keystreams
// (csrc/common/chacha20.h) of its masks, alone or fused with the stochastic fixed-point encode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace medfl::secagg {

// vec[i] += sign_j * word_i(keystream of key_j) for every mask j, wrapping (T = uint32_t or uint64_t);
// keys is n_masks * 32 bytes, signs n_masks entries of +1 / -1. Keystream words are little-endian.
template <typename T>
void apply_masks(T* vec, std::size_t n, const uint8_t* keys, const int8_t* signs, std::size_t n_masks,
                 const uint8_t nonce[12]);

// Fused quantize + mask: out = stochastic fixed-point encode of x (the rule of
// fixed_point/fixed_point.h, uniforms indexed by the flat position) plus every mask, per tile.
// Returns (code, index) as fixed_point::Status (kOk, kNonFinite, kOverflow); out is garbage unless kOk.
template <typename T>
std::pair<int64_t, int64_t> quantize_and_mask(const float* x, T* out, std::size_t n, int frac_bits, uint64_t seed,
                                              const uint8_t* keys, const int8_t* signs, std::size_t n_masks,
                                              const uint8_t nonce[12]);

}  // namespace medfl::secagg

#ifdef MEDFL_WITH_CUDA
namespace medfl::secagg {
// CUDA versions on the caller's stream (out / vec are device pointers; keys and signs on the host).
void apply_masks_cuda(void* vec, int ring_bits, uint64_t n, const uint8_t* keys, const int8_t* signs,
                      std::size_t n_masks, const uint8_t nonce[12], void* stream);
// Fused quantize + mask on the device (x and out device pointers); synchronises the stream to
// read the status; (code, index) as in quantize_and_mask. At most 512 masks (shared memory).
std::pair<int64_t, int64_t> quantize_and_mask_cuda(const float* x, void* out, int ring_bits, uint64_t n,
                                                   int frac_bits, uint64_t seed, const uint8_t* keys,
                                                   const int8_t* signs, std::size_t n_masks,
                                                   const uint8_t nonce[12], void* stream);
}  // namespace medfl::secagg
#endif
