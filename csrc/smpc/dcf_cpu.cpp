// Batched DCF key generation and evaluation on the CPU (see smpc.h for the key layout and PRG).
// The PRG is fixed-key AES-128 in the Matyas-Meyer-Oseas mode; AES runs on AES-NI when the CPU
// has it (checked at run time) and on a portable byte-oriented AES otherwise. Elements are
// independent: evaluation interleaves kLanes elements so the AES pipeline stays full, and OpenMP
// splits the batch.
//
// References: Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee, "Function Secret Sharing
// for Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (Fig. 1); FIPS-197 (AES);
// Matyas, Meyer and Oseas 1985 / Guo et al., "Efficient and Secure Multiparty Computation from
// Fixed-Key Block Ciphers", S&P 2020 (fixed-key MMO).
#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MEDFL_X86 1
#endif

#include "smpc/smpc.h"

namespace medfl::smpc {
namespace {

struct Block {
  uint64_t w[2];
};

constexpr int kLanes = 8;         // elements evaluated together
constexpr uint64_t kConvert = 4;  // tweak of the leaf conversion block

// ---------------- AES-128, portable (FIPS-197) ----------------
const uint8_t kSbox[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76, 0xca, 0x82, 0xc9,
    0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0, 0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f,
    0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15, 0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07,
    0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75, 0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3,
    0x29, 0xe3, 0x2f, 0x84, 0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58,
    0xcf, 0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8, 0x51, 0xa3,
    0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2, 0xcd, 0x0c, 0x13, 0xec, 0x5f,
    0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73, 0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88,
    0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb, 0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac,
    0x62, 0x91, 0x95, 0xe4, 0x79, 0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a,
    0xae, 0x08, 0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a, 0x70,
    0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e, 0xe1, 0xf8, 0x98, 0x11,
    0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf, 0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42,
    0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16};

inline uint8_t xtime(uint8_t x) { return static_cast<uint8_t>((x << 1) ^ ((x >> 7) * 0x1b)); }

struct RoundKeys {
  alignas(16) uint8_t rk[176];
  RoundKeys() {
    const uint8_t rcon[10] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36};
    for (int i = 0; i < 16; ++i) rk[i] = static_cast<uint8_t>(i);  // the public PRG key: bytes 0..15
    for (int i = 4; i < 44; ++i) {
      uint8_t t[4];
      std::memcpy(t, rk + 4 * (i - 1), 4);
      if (i % 4 == 0) {
        const uint8_t t0 = t[0];
        t[0] = static_cast<uint8_t>(kSbox[t[1]] ^ rcon[i / 4 - 1]);
        t[1] = kSbox[t[2]];
        t[2] = kSbox[t[3]];
        t[3] = kSbox[t0];
      }
      for (int j = 0; j < 4; ++j) rk[4 * i + j] = static_cast<uint8_t>(rk[4 * (i - 4) + j] ^ t[j]);
    }
  }
};

const RoundKeys& round_keys() {
  static const RoundKeys keys;
  return keys;
}

void aes_portable(const uint8_t* rk, const uint8_t in[16], uint8_t out[16]) {
  uint8_t s[16];
  for (int i = 0; i < 16; ++i) s[i] = in[i] ^ rk[i];
  for (int round = 1; round <= 10; ++round) {
    uint8_t t[16];
    for (int c = 0; c < 4; ++c)
      for (int r = 0; r < 4; ++r) t[r + 4 * c] = kSbox[s[r + 4 * ((c + r) % 4)]];  // SubBytes + ShiftRows
    if (round < 10) {
      for (int c = 0; c < 4; ++c) {  // MixColumns
        uint8_t* col = t + 4 * c;
        const uint8_t a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3], all = a0 ^ a1 ^ a2 ^ a3;
        col[0] = static_cast<uint8_t>(a0 ^ all ^ xtime(a0 ^ a1));
        col[1] = static_cast<uint8_t>(a1 ^ all ^ xtime(a1 ^ a2));
        col[2] = static_cast<uint8_t>(a2 ^ all ^ xtime(a2 ^ a3));
        col[3] = static_cast<uint8_t>(a3 ^ all ^ xtime(a3 ^ a0));
      }
    }
    for (int i = 0; i < 16; ++i) s[i] = t[i] ^ rk[16 * round + i];
  }
  std::memcpy(out, s, 16);
}

// out[i] = AES(in[i]) ^ in[i] for n blocks (the MMO compression), portable.
void mmo_portable(const Block* in, Block* out, int n) {
  const uint8_t* rk = round_keys().rk;
  for (int i = 0; i < n; ++i) {
    Block e;
    aes_portable(rk, reinterpret_cast<const uint8_t*>(&in[i]), reinterpret_cast<uint8_t*>(&e));
    out[i].w[0] = e.w[0] ^ in[i].w[0];
    out[i].w[1] = e.w[1] ^ in[i].w[1];
  }
}

#ifdef MEDFL_X86
__attribute__((target("aes,sse2"))) void mmo_aesni(const Block* in, Block* out, int n) {
  const __m128i* rk = reinterpret_cast<const __m128i*>(round_keys().rk);
  __m128i k[11];
  for (int r = 0; r < 11; ++r) k[r] = _mm_load_si128(rk + r);
  int i = 0;
  for (; i + 8 <= n; i += 8) {  // eight independent blocks keep the AES units busy
    __m128i x[8], b[8];
    for (int j = 0; j < 8; ++j) {
      x[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&in[i + j]));
      b[j] = _mm_xor_si128(x[j], k[0]);
    }
    for (int r = 1; r < 10; ++r)
      for (int j = 0; j < 8; ++j) b[j] = _mm_aesenc_si128(b[j], k[r]);
    for (int j = 0; j < 8; ++j)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&out[i + j]),
                       _mm_xor_si128(_mm_aesenclast_si128(b[j], k[10]), x[j]));
  }
  for (; i < n; ++i) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&in[i]));
    __m128i b = _mm_xor_si128(x, k[0]);
    for (int r = 1; r < 10; ++r) b = _mm_aesenc_si128(b, k[r]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(&out[i]), _mm_xor_si128(_mm_aesenclast_si128(b, k[10]), x));
  }
}

// Two blocks per instruction with VAES (256-bit AES rounds; twice the blocks per cycle of AES-NI
// on CPUs with two AES pipes of that width, e.g. AMD Zen 3).
__attribute__((target("vaes,avx2"))) void mmo_vaes(const Block* in, Block* out, int n) {
  const __m128i* rk = reinterpret_cast<const __m128i*>(round_keys().rk);
  __m256i k[11];
  for (int r = 0; r < 11; ++r) k[r] = _mm256_broadcastsi128_si256(_mm_load_si128(rk + r));
  int i = 0;
  while (i + 2 <= n) {  // up to eight registers of two blocks in flight
    const int pairs = std::min(8, (n - i) / 2);
    __m256i x[8], b[8];
    for (int j = 0; j < pairs; ++j) {
      x[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&in[i + 2 * j]));
      b[j] = _mm256_xor_si256(x[j], k[0]);
    }
    for (int r = 1; r < 10; ++r)
      for (int j = 0; j < pairs; ++j) b[j] = _mm256_aesenc_epi128(b[j], k[r]);
    for (int j = 0; j < pairs; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[i + 2 * j]),
                          _mm256_xor_si256(_mm256_aesenclast_epi128(b[j], k[10]), x[j]));
    i += 2 * pairs;
  }
  if (i < n) mmo_aesni(in + i, out + i, n - i);
}

bool cpu_has_aesni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") != 0 && __builtin_cpu_supports("sse2") != 0;
  }();
  return has;
}

bool cpu_has_vaes() {
  static const bool has = [] {
    __builtin_cpu_init();
    return cpu_has_aesni() && __builtin_cpu_supports("vaes") != 0 && __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#else
bool cpu_has_aesni() { return false; }
bool cpu_has_vaes() { return false; }
#endif

using Mmo = void (*)(const Block*, Block*, int);

Mmo pick_mmo(AesImpl impl) {
  if (impl == AesImpl::kAuto) impl = cpu_has_vaes() ? AesImpl::kVaes : cpu_has_aesni() ? AesImpl::kAesni : AesImpl::kPortable;
#ifdef MEDFL_X86
  if (impl == AesImpl::kVaes && cpu_has_vaes()) return mmo_vaes;
  if (impl == AesImpl::kAesni && cpu_has_aesni()) return mmo_aesni;
#endif
  if (impl != AesImpl::kPortable) throw std::invalid_argument("this CPU lacks the requested AES instructions");
  return mmo_portable;
}

inline Block tweak(const Block& s, uint64_t i) { return Block{{s.w[0] ^ i, s.w[1]}}; }

// Multiply by (-1)^neg in the ring.
inline uint64_t signed_by(bool neg, uint64_t v) { return neg ? uint64_t{0} - v : v; }

// Evaluate elements [e0, e0 + lanes) (lanes <= kLanes) of one party's keys; branch-free on the
// secret control bits and the public path bits (both are unpredictable).
void eval_lanes(Mmo mmo, int party, const DcfKeys& key, const uint64_t* x, uint64_t* out, int64_t e0, int lanes,
                int bits, int payload) {
  Block s[kLanes], in[2 * kLanes], got[2 * kLanes];
  uint64_t t[kLanes];  // control bit as an all-ones / all-zeros mask
  uint64_t v[kLanes][2] = {};
  const uint64_t neg = party == 1 ? ~uint64_t{0} : 0;
  for (int l = 0; l < lanes; ++l) {
    std::memcpy(&s[l], key.seed + 2 * (e0 + l), sizeof(Block));
    t[l] = neg;
  }
  for (int i = 0; i < bits; ++i) {
    const int shift = bits - 1 - i;
    for (int l = 0; l < lanes; ++l) {
      const uint64_t dir = (x[e0 + l] >> shift) & 1;
      in[2 * l] = tweak(s[l], dir);                               // the seed block of the chosen side
      in[2 * l + 1] = tweak(s[l], payload == 1 ? 2 : 2 + dir);  // its value words
    }
    mmo(in, got, 2 * lanes);
    for (int l = 0; l < lanes; ++l) {
      const int64_t e = e0 + l, at = e * bits + i;
      const uint64_t dir = (x[e] >> shift) & 1;
      Block ns = got[2 * l];
      uint64_t nt = ns.w[0] & 1;
      ns.w[0] &= ~uint64_t{1};
      const uint64_t* scw = key.s_cw + 2 * at;
      const uint64_t* vcw = key.v_cw + payload * at;
      ns.w[0] ^= scw[0] & t[l];
      ns.w[1] ^= scw[1] & t[l];
      nt ^= key.t_cw[2 * at + dir] & t[l] & 1;
      const uint64_t lo = got[2 * l + 1].w[0], hi = got[2 * l + 1].w[1];
      for (int j = 0; j < payload; ++j) {
        const uint64_t word = payload == 1 ? (lo & (dir - 1)) | (hi & (0 - dir)) : (j ? hi : lo);
        const uint64_t term = word + (vcw[j] & t[l]);
        v[l][j] += (term ^ neg) - neg;  // (-1)^party * term
      }
      s[l] = ns;
      t[l] = uint64_t{0} - nt;
    }
  }
  for (int l = 0; l < lanes; ++l) in[l] = tweak(s[l], kConvert);
  mmo(in, got, lanes);
  for (int l = 0; l < lanes; ++l) {
    const int64_t e = e0 + l;
    for (int j = 0; j < payload; ++j) {
      const uint64_t term = got[l].w[j] + (key.final_cw[e * payload + j] & t[l]);
      out[e * payload + j] = v[l][j] + ((term ^ neg) - neg);
    }
  }
}

// Generate the keys of one element (both parties' trees walked together: 8 blocks per level).
void gen_one(Mmo mmo, const uint64_t* alpha, const uint64_t* beta, const uint64_t* roots, uint64_t* s_cw,
             uint64_t* v_cw, uint8_t* t_cw, uint64_t* final_cw, int64_t n, int64_t e, int bits, int payload) {
  Block s[2];
  std::memcpy(&s[0], roots + 2 * e, sizeof(Block));
  std::memcpy(&s[1], roots + 2 * (n + e), sizeof(Block));
  uint8_t t[2] = {0, 1};
  uint64_t v_alpha[2] = {0, 0};
  const int nblk = 2 + payload;  // sL, sR, value blocks
  Block in[8], got[8];
  for (int i = 0; i < bits; ++i) {
    const uint64_t a = (alpha[e] >> (bits - 1 - i)) & 1;
    for (int b = 0; b < 2; ++b)
      for (int q = 0; q < nblk; ++q) in[b * nblk + q] = tweak(s[b], static_cast<uint64_t>(q));
    mmo(in, got, 2 * nblk);
    Block side[2][2];  // [party][0 = left, 1 = right]
    uint8_t tt[2][2];
    uint64_t vv[2][2][2];  // [party][side][word]
    for (int b = 0; b < 2; ++b) {
      for (int d = 0; d < 2; ++d) {
        side[b][d] = got[b * nblk + d];
        tt[b][d] = static_cast<uint8_t>(side[b][d].w[0] & 1);
        side[b][d].w[0] &= ~uint64_t{1};
        for (int j = 0; j < payload; ++j)
          vv[b][d][j] = payload == 1 ? got[b * nblk + 2].w[d] : got[b * nblk + 2 + d].w[j];
      }
    }
    const int keep = static_cast<int>(a), lose = 1 - keep;
    const int64_t at = e * bits + i;
    Block scw{{side[0][lose].w[0] ^ side[1][lose].w[0], side[0][lose].w[1] ^ side[1][lose].w[1]}};
    s_cw[2 * at] = scw.w[0];
    s_cw[2 * at + 1] = scw.w[1];
    for (int j = 0; j < payload; ++j) {
      uint64_t vc = signed_by(t[1], vv[1][lose][j] - vv[0][lose][j] - v_alpha[j]);
      if (a) vc += signed_by(t[1], beta[e * payload + j]);  // losing the left branch: x_i = 0 < alpha_i = 1
      v_cw[at * payload + j] = vc;
      v_alpha[j] = v_alpha[j] - vv[1][keep][j] + vv[0][keep][j] + signed_by(t[1], vc);
    }
    const uint8_t tcw[2] = {static_cast<uint8_t>(tt[0][0] ^ tt[1][0] ^ a ^ 1), static_cast<uint8_t>(tt[0][1] ^ tt[1][1] ^ a)};
    t_cw[2 * at] = tcw[0];
    t_cw[2 * at + 1] = tcw[1];
    for (int b = 0; b < 2; ++b) {
      Block ns = side[b][keep];
      if (t[b]) {
        ns.w[0] ^= scw.w[0];
        ns.w[1] ^= scw.w[1];
      }
      t[b] = static_cast<uint8_t>(tt[b][keep] ^ (t[b] & tcw[keep]));
      s[b] = ns;
    }
  }
  in[0] = tweak(s[0], kConvert);
  in[1] = tweak(s[1], kConvert);
  mmo(in, got, 2);
  for (int j = 0; j < payload; ++j)
    final_cw[e * payload + j] = signed_by(t[1], got[1].w[j] - got[0].w[j] - v_alpha[j]);
}

}  // namespace

void aes_tables(uint32_t rk_words[44], uint32_t t0[256]) {
  std::memcpy(rk_words, round_keys().rk, 176);  // little-endian words of the key schedule
  for (int x = 0; x < 256; ++x) {
    const uint8_t s = kSbox[x], s2 = xtime(s), s3 = static_cast<uint8_t>(s2 ^ s);
    t0[x] = static_cast<uint32_t>(s2) | static_cast<uint32_t>(s) << 8 | static_cast<uint32_t>(s) << 16 |
            static_cast<uint32_t>(s3) << 24;
  }
}

const char* aes_impl() { return cpu_has_vaes() ? "vaes" : cpu_has_aesni() ? "aesni" : "portable"; }

bool aes_available(AesImpl impl) {
  switch (impl) {
    case AesImpl::kVaes: return cpu_has_vaes();
    case AesImpl::kAesni: return cpu_has_aesni();
    default: return true;
  }
}

void dcf_eval_cpu(int party, const DcfKeys& key, const uint64_t* x, uint64_t* out, int64_t n, int bits, int payload,
                  AesImpl impl) {
  const Mmo mmo = pick_mmo(impl);
  const int64_t groups = (n + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) if (groups > 64)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t e0 = g * kLanes;
    eval_lanes(mmo, party, key, x, out, e0, static_cast<int>(std::min<int64_t>(kLanes, n - e0)), bits, payload);
  }
}

void dcf_gen_cpu(const uint64_t* alpha, const uint64_t* beta, const uint64_t* roots, uint64_t* s_cw, uint64_t* v_cw,
                 uint8_t* t_cw, uint64_t* final_cw, int64_t n, int bits, int payload, AesImpl impl) {
  const Mmo mmo = pick_mmo(impl);
#pragma omp parallel for schedule(static) if (n > 256)
  for (int64_t e = 0; e < n; ++e) gen_one(mmo, alpha, beta, roots, s_cw, v_cw, t_cw, final_cw, n, e, bits, payload);
}

}  // namespace medfl::smpc
