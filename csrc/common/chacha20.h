// ChaCha20 (RFC 8439) for every topic that needs a keystream: secagg's masks (csrc/secagg) and
// the DP noise (csrc/privacy). The keystream of (key, nonce, counter) is the concatenation of
// ChaCha20 blocks with block counters counter, counter + 1, ...; the 32-bit counter never wraps
// (callers check). CPU code in chacha20_cpu.cpp, the CUDA keystream in chacha20_cuda.cu, the
// device block function in chacha20.cuh.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace medfl::common {

constexpr int kChachaLanes = 8;                             // blocks of one CPU tile
constexpr std::size_t kChachaTileBytes = 64 * kChachaLanes;  // keystream bytes of one CPU tile

// The 16-word input state of section 2.3 with block counter 0: constants, key, counter, nonce
// (little-endian words; every host medfl builds for is little-endian, see chacha20_cpu.cpp).
inline void chacha20_init_state(const uint8_t key[32], const uint8_t nonce[12], uint32_t st[16]) {
  st[0] = 0x61707865u; st[1] = 0x3320646eu; st[2] = 0x79622d32u; st[3] = 0x6b206574u;
  std::memcpy(st + 4, key, 32);
  st[12] = 0;
  std::memcpy(st + 13, nonce, 12);
}

// One CPU keystream tile: the kChachaLanes blocks from block counter `counter` of the state st,
// written as kChachaTileBytes bytes to out (AVX2 when the CPU has it, chosen at run time).
void chacha20_tile(const uint32_t st[16], uint32_t counter, uint8_t* out);

// Write nbytes of keystream to out; blocks counter .. counter + ceil(nbytes / 64) - 1 (OpenMP
// across tiles for long streams).
void chacha20_keystream(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, uint8_t* out,
                        std::size_t nbytes);

#ifdef MEDFL_WITH_CUDA
// The same keystream on the device (out a device pointer), on the caller's stream.
void chacha20_keystream_cuda(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, void* out,
                             uint64_t nbytes, void* stream);
#endif

}  // namespace medfl::common
