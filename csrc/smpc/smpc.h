// Kernels of encrypted inference (medfl/smpc): exact ring matrix products in Z_2^64 and batched
// evaluation / generation of distributed comparison functions (DCF) with a fixed-key AES-128 PRG.
//
// Ring products: C (m x n) (+)= A (m x k) @ B (k x n), all uint64 row-major, wrapping mod 2^64.
// DCF: the construction of Boyle et al., EUROCRYPT 2021, Fig. 1, on `bits`-bit unsigned inputs
// (most significant bit first) with `payload` 64-bit output words; the PRG is the one of
// medfl/smpc/fss/dcf.py (bit for bit): G(s) = AES_k(s ^ i) ^ s ^ i for tweaks i = 0, 1, 2, 3 xored
// into the low 64-bit word, k = bytes 0..15. Block 0 gives (sL, tL), block 1 (sR, tR) (t is bit 0
// of the low word, which is then cleared), blocks 2.. give the value words vL[0..P), vR[0..P).
#pragma once

#include <cstddef>
#include <cstdint>

namespace medfl::smpc {

// Which CPU code path the ring product uses ("avx2" or "portable").
const char* ring_matmul_impl();

// C = A @ B (accumulate = false) or C += A @ B (accumulate = true), mod 2^64; all three C-contiguous.
// force_portable selects the scalar path (tests compare both).
void ring_matmul_cpu(const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t m, int64_t k, int64_t n,
                     bool accumulate, bool force_portable);

// Which AES path the DCF kernels use by default ("vaes", "aesni" or "portable"); the kernels
// take an AesImpl so tests can run every path the CPU has (std::invalid_argument if it lacks one).
enum class AesImpl { kAuto = 0, kPortable = 1, kAesni = 2, kVaes = 3 };
const char* aes_impl();
bool aes_available(AesImpl impl);

// One party's DCF keys for a batch of n comparisons (element-major, as in medfl/smpc/fss/dcf.py):
// seed (n, 2), s_cw (n, bits, 2), v_cw (n, bits, P), t_cw (n, bits, 2) bytes, final (n, P).
struct DcfKeys {
  const uint64_t* seed;
  const uint64_t* s_cw;
  const uint64_t* v_cw;
  const uint8_t* t_cw;
  const uint64_t* final_cw;
};

// out (n, P) = this party's shares of payload * [x < alpha] at the public points x (n).
void dcf_eval_cpu(int party, const DcfKeys& key, const uint64_t* x, uint64_t* out, int64_t n, int bits, int payload,
                  AesImpl impl);

// Keys for x -> beta * [x < alpha]: alpha (n), beta (n, P), roots (2, n, 2) from the caller's CSPRNG.
// Writes s_cw (n, bits, 2), v_cw (n, bits, P), t_cw (n, bits, 2), final (n, P) (shared by both parties).
void dcf_gen_cpu(const uint64_t* alpha, const uint64_t* beta, const uint64_t* roots, uint64_t* s_cw, uint64_t* v_cw,
                 uint8_t* t_cw, uint64_t* final_cw, int64_t n, int bits, int payload, AesImpl impl);

// The PRG's AES-128 round keys as 44 little-endian words and the T-table T0 (little-endian
// columns: T0[x] = 2S(x) | S(x) << 8 | S(x) << 16 | 3S(x) << 24) for the GPU kernels.
void aes_tables(uint32_t round_keys[44], uint32_t t0[256]);

#ifdef MEDFL_WITH_CUDA
// Device pointers; all work is queued on `stream` (a cudaStream_t).
void ring_matmul_cuda(const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t m, int64_t k, int64_t n,
                      bool accumulate, void* stream);
void dcf_eval_cuda(int party, const DcfKeys& key, const uint64_t* x, uint64_t* out, int64_t n, int bits, int payload,
                   void* stream);
// As dcf_gen_cpu on device pointers (the same correction words, bit for bit, for the same roots).
void dcf_gen_cuda(const uint64_t* alpha, const uint64_t* beta, const uint64_t* roots, uint64_t* s_cw, uint64_t* v_cw,
                  uint8_t* t_cw, uint64_t* final_cw, int64_t n, int bits, int payload, void* stream);
#endif

}  // namespace medfl::smpc
