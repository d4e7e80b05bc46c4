// Exact ring matrix product mod 2^64 on the CPU: packed panels, register-blocked micro-kernels,
// OpenMP over row blocks. int64 has no BLAS, so the product is computed directly: the AVX2
// kernel splits each 64-bit product into 32-bit halves with vpmuludq,
//   lo64(a * b) = a_lo * b_lo + ((a_hi * b_lo + a_lo * b_hi) << 32)   (mod 2^64),
// keeping the two sums in separate accumulators and combining them once per tile. The portable
// kernel is the same blocking with scalar 64-bit multiplies. The path is picked at run time.
//
// References: Goto and van de Geijn, "Anatomy of High-Performance Matrix Multiplication", ACM
// TOMS 2008 (packing and blocking).
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MEDFL_X86 1
#endif

#include "smpc/smpc.h"

namespace medfl::smpc {
namespace {

constexpr int64_t kMR = 2;    // rows per micro-tile
constexpr int64_t kNR = 8;    // columns per micro-tile (two 4-lane vectors)
constexpr int64_t kKC = 256;  // depth of one packed block
constexpr int64_t kMC = 64;   // rows of one packed A block

// A block rows [i0, i0 + mc) x depth [p0, p0 + kc) as micro-panels: [panel][kk][r][a, a >> 32]
// (zero padded), so the kernel broadcasts both halves straight from memory.
void pack_a(const uint64_t* a, int64_t lda, int64_t mc, int64_t kc, uint64_t* out) {
  for (int64_t ir = 0; ir < mc; ir += kMR) {
    const int64_t rows = std::min(kMR, mc - ir);
    for (int64_t kk = 0; kk < kc; ++kk) {
      for (int64_t r = 0; r < kMR; ++r) {
        const uint64_t v = r < rows ? a[(ir + r) * lda + kk] : 0;
        *out++ = v;
        *out++ = v >> 32;
      }
    }
  }
}

// B block depth kc x all n columns as micro-panels: [panel][kk][b[0..NR), b[0..NR) >> 32] (zero padded).
void pack_b(const uint64_t* b, int64_t ldb, int64_t kc, int64_t n, uint64_t* out) {
  for (int64_t jr = 0; jr < n; jr += kNR) {
    const int64_t cols = std::min(kNR, n - jr);
    for (int64_t kk = 0; kk < kc; ++kk) {
      const uint64_t* row = b + kk * ldb + jr;
      for (int64_t c = 0; c < kNR; ++c) out[c] = c < cols ? row[c] : 0;
      for (int64_t c = 0; c < kNR; ++c) out[kNR + c] = out[c] >> 32;
      out += 2 * kNR;
    }
  }
}

void kernel_portable(int64_t kc, const uint64_t* ap, const uint64_t* bp, uint64_t tile[kMR][kNR]) {
  uint64_t acc[kMR][kNR] = {};
  for (int64_t kk = 0; kk < kc; ++kk) {
    for (int64_t r = 0; r < kMR; ++r) {
      const uint64_t av = ap[2 * (kk * kMR + r)];
      for (int64_t c = 0; c < kNR; ++c) acc[r][c] += av * bp[2 * kk * kNR + c];
    }
  }
  std::memcpy(tile, acc, sizeof(acc));
}

#ifdef MEDFL_X86
__attribute__((target("avx2"))) void kernel_avx2(int64_t kc, const uint64_t* ap, const uint64_t* bp,
                                                  uint64_t tile[kMR][kNR]) {
  __m256i ll00 = _mm256_setzero_si256(), ll01 = ll00, ll10 = ll00, ll11 = ll00;
  __m256i x00 = ll00, x01 = ll00, x10 = ll00, x11 = ll00;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const uint64_t* bk = bp + 2 * kk * kNR;
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 4));
    const __m256i bh0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + kNR));
    const __m256i bh1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + kNR + 4));
    const long long* ak = reinterpret_cast<const long long*>(ap + 2 * kk * kMR);
    const __m256i a0 = _mm256_set1_epi64x(ak[0]), ah0 = _mm256_set1_epi64x(ak[1]);
    const __m256i a1 = _mm256_set1_epi64x(ak[2]), ah1 = _mm256_set1_epi64x(ak[3]);
    ll00 = _mm256_add_epi64(ll00, _mm256_mul_epu32(a0, b0));
    ll01 = _mm256_add_epi64(ll01, _mm256_mul_epu32(a0, b1));
    ll10 = _mm256_add_epi64(ll10, _mm256_mul_epu32(a1, b0));
    ll11 = _mm256_add_epi64(ll11, _mm256_mul_epu32(a1, b1));
    x00 = _mm256_add_epi64(x00, _mm256_add_epi64(_mm256_mul_epu32(ah0, b0), _mm256_mul_epu32(a0, bh0)));
    x01 = _mm256_add_epi64(x01, _mm256_add_epi64(_mm256_mul_epu32(ah0, b1), _mm256_mul_epu32(a0, bh1)));
    x10 = _mm256_add_epi64(x10, _mm256_add_epi64(_mm256_mul_epu32(ah1, b0), _mm256_mul_epu32(a1, bh0)));
    x11 = _mm256_add_epi64(x11, _mm256_add_epi64(_mm256_mul_epu32(ah1, b1), _mm256_mul_epu32(a1, bh1)));
  }
#define MEDFL_FOLD(ll, x) _mm256_add_epi64(ll, _mm256_slli_epi64(x, 32))
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&tile[0][0]), MEDFL_FOLD(ll00, x00));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&tile[0][4]), MEDFL_FOLD(ll01, x01));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&tile[1][0]), MEDFL_FOLD(ll10, x10));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(&tile[1][4]), MEDFL_FOLD(ll11, x11));
#undef MEDFL_FOLD
}

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#else
bool cpu_has_avx2() { return false; }
#endif

using Kernel = void (*)(int64_t, const uint64_t*, const uint64_t*, uint64_t[kMR][kNR]);

Kernel pick_kernel(bool force_portable) {
#ifdef MEDFL_X86
  if (!force_portable && cpu_has_avx2()) return kernel_avx2;
#endif
  (void)force_portable;
  return kernel_portable;
}

// C[i0:i0+mc, :] += A-block @ B-block for one packed depth block.
void block_rows(Kernel kernel, const uint64_t* ap, const uint64_t* bp, uint64_t* c, int64_t ldc, int64_t mc,
                int64_t kc, int64_t n) {
  uint64_t tile[kMR][kNR];
  for (int64_t jr = 0; jr < n; jr += kNR) {
    const int64_t cols = std::min(kNR, n - jr);
    const uint64_t* bpanel = bp + (jr / kNR) * kc * 2 * kNR;
    for (int64_t ir = 0; ir < mc; ir += kMR) {
      const int64_t rows = std::min(kMR, mc - ir);
      kernel(kc, ap + (ir / kMR) * kc * 2 * kMR, bpanel, tile);
      for (int64_t r = 0; r < rows; ++r) {
        uint64_t* crow = c + (ir + r) * ldc + jr;
        for (int64_t q = 0; q < cols; ++q) crow[q] += tile[r][q];
      }
    }
  }
}

}  // namespace

const char* ring_matmul_impl() { return cpu_has_avx2() ? "avx2" : "portable"; }

void ring_matmul_cpu(const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t m, int64_t k, int64_t n,
                     bool accumulate, bool force_portable) {
  if (m <= 0 || n <= 0) return;
  if (!accumulate) std::fill(c, c + m * n, uint64_t{0});
  if (k <= 0) return;
  const Kernel kernel = pick_kernel(force_portable);
  const int64_t n_pad = (n + kNR - 1) / kNR * kNR;
  std::vector<uint64_t> bpack(static_cast<std::size_t>(2 * std::min(k, kKC) * n_pad));
  const int64_t row_blocks = (m + kMC - 1) / kMC;
  for (int64_t p0 = 0; p0 < k; p0 += kKC) {
    const int64_t kc = std::min(kKC, k - p0);
    pack_b(b + p0 * n, n, kc, n, bpack.data());
#pragma omp parallel if (row_blocks > 1 && m * n * kc > (int64_t{1} << 16))
    {
      std::vector<uint64_t> apack(static_cast<std::size_t>(2 * (kMC + kMR) * kc));
#pragma omp for schedule(dynamic)
      for (int64_t blk = 0; blk < row_blocks; ++blk) {
        const int64_t i0 = blk * kMC, mc = std::min(kMC, m - i0);
        pack_a(a + i0 * k + p0, k, mc, kc, apack.data());
        block_rows(kernel, apack.data(), bpack.data(), c + i0 * n, n, mc, kc, n);
      }
    }
  }
}

}  // namespace medfl::smpc
