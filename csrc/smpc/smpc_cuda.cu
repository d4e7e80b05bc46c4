// CUDA kernels of encrypted inference on the caller's stream: the ring product mod 2^64 (shared-
// memory tiles, 4 x 4 outputs per thread; 64-bit multiplies wrap exactly as on the CPU) and the
// batched DCF evaluation and key generation (one thread per comparison; AES-128 with one T-table
// in shared memory, the same fixed-key MMO PRG and key layout as dcf_cpu.cpp, so the dealer's
// keys are bit for bit those of dcf_gen_cpu for the same roots). The T-table lookups are indexed by
// secret bytes, so shared-memory bank timing is data dependent; the CPU path with AES-NI is the
// constant-time one.
//
// References: FIPS-197 (AES, the 32-bit T-table formulation of section 5.2 of Daemen and Rijmen,
// "AES Proposal: Rijndael"); Boyle et al., EUROCRYPT 2021, Fig. 1 (DCF).
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_check.cuh"
#include "smpc/smpc.h"

namespace medfl::smpc {
namespace {

using common::cuda_check;

// ---------------- ring product ----------------
constexpr int kTile = 64;  // outputs per block side
constexpr int kDepth = 16;  // depth of one shared tile

__global__ void ring_matmul_kernel(const uint64_t* __restrict__ a, const uint64_t* __restrict__ b,
                                   uint64_t* __restrict__ c, int64_t m, int64_t k, int64_t n, bool accumulate) {
  __shared__ uint64_t as[kDepth][kTile];
  __shared__ uint64_t bs[kDepth][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 16 x 16 threads
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  uint64_t acc[4][4] = {};
  const int tid = ty * 16 + tx;
  for (int64_t p0 = 0; p0 < k; p0 += kDepth) {
    for (int i = tid; i < kDepth * kTile; i += 256) {
      const int r = i / kDepth, q = i % kDepth;  // A tile: 64 rows x 16 depth
      const int64_t gr = row0 + r, gq = p0 + q;
      as[q][r] = (gr < m && gq < k) ? a[gr * k + gq] : 0;
      const int q2 = i / kTile, cc = i % kTile;  // B tile: 16 depth x 64 columns
      const int64_t gq2 = p0 + q2, gc = col0 + cc;
      bs[q2][cc] = (gq2 < k && gc < n) ? b[gq2 * n + gc] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kDepth; ++q) {
      uint64_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[q][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[q][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t cc = col0 + tx + 16 * j;
      if (cc < n) c[r * n + cc] = (accumulate ? c[r * n + cc] : 0) + acc[i][j];
    }
  }
}

// ---------------- AES-128 (T-table) and the DCF ----------------
__constant__ uint32_t c_round_keys[44];
__constant__ uint32_t c_t0[256];

struct Blk {
  uint64_t w[2];
};

__device__ __forceinline__ uint32_t rotl8(uint32_t v, int c) { return (v << c) | (v >> (32 - c)); }

__device__ __forceinline__ Blk mmo(const uint32_t* t0, Blk in) {
  uint32_t s[4] = {static_cast<uint32_t>(in.w[0]) ^ c_round_keys[0], static_cast<uint32_t>(in.w[0] >> 32) ^ c_round_keys[1],
                   static_cast<uint32_t>(in.w[1]) ^ c_round_keys[2], static_cast<uint32_t>(in.w[1] >> 32) ^ c_round_keys[3]};
#pragma unroll
  for (int round = 1; round < 10; ++round) {
    uint32_t t[4];
#pragma unroll
    for (int c = 0; c < 4; ++c)
      t[c] = t0[s[c] & 0xff] ^ rotl8(t0[(s[(c + 1) & 3] >> 8) & 0xff], 8) ^
             rotl8(t0[(s[(c + 2) & 3] >> 16) & 0xff], 16) ^ rotl8(t0[s[(c + 3) & 3] >> 24], 24) ^
             c_round_keys[4 * round + c];
#pragma unroll
    for (int c = 0; c < 4; ++c) s[c] = t[c];
  }
  uint32_t o[4];
#pragma unroll
  for (int c = 0; c < 4; ++c)  // S(x) is byte 1 of T0[x]
    o[c] = (((t0[s[c] & 0xff] >> 8) & 0xff) | (t0[(s[(c + 1) & 3] >> 8) & 0xff] & 0xff00) |
            ((t0[(s[(c + 2) & 3] >> 16) & 0xff] << 8) & 0xff0000) | ((t0[s[(c + 3) & 3] >> 24] << 16) & 0xff000000)) ^
           c_round_keys[40 + c];
  Blk out;
  out.w[0] = ((static_cast<uint64_t>(o[1]) << 32) | o[0]) ^ in.w[0];
  out.w[1] = ((static_cast<uint64_t>(o[3]) << 32) | o[2]) ^ in.w[1];
  return out;
}

__device__ __forceinline__ Blk tweak(Blk s, uint64_t i) {
  s.w[0] ^= i;
  return s;
}

__global__ void dcf_eval_kernel(int party, const uint64_t* __restrict__ seed, const uint64_t* __restrict__ s_cw,
                                const uint64_t* __restrict__ v_cw, const uint8_t* __restrict__ t_cw,
                                const uint64_t* __restrict__ final_cw, const uint64_t* __restrict__ x,
                                uint64_t* __restrict__ out, int64_t n, int bits, int payload) {
  __shared__ uint32_t t0[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) t0[i] = c_t0[i];
  __syncthreads();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const uint64_t neg = party == 1 ? ~uint64_t{0} : 0;
  Blk s{{seed[2 * e], seed[2 * e + 1]}};
  uint64_t t = neg, v0 = 0, v1 = 0;
  const uint64_t xe = x[e];
  for (int i = 0; i < bits; ++i) {
    const uint64_t dir = (xe >> (bits - 1 - i)) & 1;
    Blk ns = mmo(t0, tweak(s, dir));
    const Blk vb = mmo(t0, tweak(s, payload == 1 ? 2 : 2 + dir));
    uint64_t nt = ns.w[0] & 1;
    ns.w[0] &= ~uint64_t{1};
    const int64_t at = e * bits + i;
    ns.w[0] ^= s_cw[2 * at] & t;
    ns.w[1] ^= s_cw[2 * at + 1] & t;
    nt ^= t_cw[2 * at + dir] & t & 1;
    if (payload == 1) {
      const uint64_t word = (vb.w[0] & (dir - 1)) | (vb.w[1] & (0 - dir));
      v0 += ((word + (v_cw[at] & t)) ^ neg) - neg;
    } else {
      v0 += ((vb.w[0] + (v_cw[2 * at] & t)) ^ neg) - neg;
      v1 += ((vb.w[1] + (v_cw[2 * at + 1] & t)) ^ neg) - neg;
    }
    s = ns;
    t = uint64_t{0} - nt;
  }
  const Blk conv = mmo(t0, tweak(s, 4));
  out[e * payload] = v0 + (((conv.w[0] + (final_cw[e * payload] & t)) ^ neg) - neg);
  if (payload == 2) out[e * payload + 1] = v1 + (((conv.w[1] + (final_cw[e * payload + 1] & t)) ^ neg) - neg);
}

// (-1)^neg * v for an all-ones / all-zeros mask neg.
__device__ __forceinline__ uint64_t signed_by(uint64_t neg, uint64_t v) { return (v ^ neg) - neg; }

// Keys of one comparison per thread, as gen_one of dcf_cpu.cpp: both parties' trees walked together,
// (2 + payload) AES blocks per party and level. The branches on alpha's bits are the dealer's own
// secret; selects keep the per-level values in registers.
__global__ void dcf_gen_kernel(const uint64_t* __restrict__ alpha, const uint64_t* __restrict__ beta,
                               const uint64_t* __restrict__ roots, uint64_t* __restrict__ s_cw,
                               uint64_t* __restrict__ v_cw, uint8_t* __restrict__ t_cw,
                               uint64_t* __restrict__ final_cw, int64_t n, int bits, int payload) {
  __shared__ uint32_t t0[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) t0[i] = c_t0[i];
  __syncthreads();
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  Blk s[2] = {Blk{{roots[2 * e], roots[2 * e + 1]}}, Blk{{roots[2 * (n + e)], roots[2 * (n + e) + 1]}}};
  uint64_t t[2] = {0, 1};
  uint64_t v_alpha[2] = {0, 0};
  const uint64_t ae = alpha[e];
  const uint64_t be[2] = {beta[e * payload], payload == 2 ? beta[e * payload + 1] : 0};
  for (int i = 0; i < bits; ++i) {
    const uint64_t a = (ae >> (bits - 1 - i)) & 1;
    Blk keep_s[2], lose_s[2];
    uint64_t keep_t[2], tt[2][2], keep_v[2][2], lose_v[2][2];
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      Blk side[2];
#pragma unroll
      for (int d = 0; d < 2; ++d) {
        side[d] = mmo(t0, tweak(s[b], static_cast<uint64_t>(d)));
        tt[b][d] = side[d].w[0] & 1;
        side[d].w[0] &= ~uint64_t{1};
      }
      uint64_t vv[2][2];  // [side][word]
      if (payload == 1) {
        const Blk v = mmo(t0, tweak(s[b], 2));
        vv[0][0] = v.w[0];
        vv[1][0] = v.w[1];
        vv[0][1] = vv[1][1] = 0;
      } else {
        const Blk vl = mmo(t0, tweak(s[b], 2)), vr = mmo(t0, tweak(s[b], 3));
        vv[0][0] = vl.w[0];
        vv[0][1] = vl.w[1];
        vv[1][0] = vr.w[0];
        vv[1][1] = vr.w[1];
      }
      keep_s[b] = a ? side[1] : side[0];
      lose_s[b] = a ? side[0] : side[1];
      keep_t[b] = a ? tt[b][1] : tt[b][0];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        keep_v[b][j] = a ? vv[1][j] : vv[0][j];
        lose_v[b][j] = a ? vv[0][j] : vv[1][j];
      }
    }
    const int64_t at = e * bits + i;
    const uint64_t scw0 = lose_s[0].w[0] ^ lose_s[1].w[0], scw1 = lose_s[0].w[1] ^ lose_s[1].w[1];
    s_cw[2 * at] = scw0;
    s_cw[2 * at + 1] = scw1;
    const uint64_t neg1 = uint64_t{0} - t[1];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (j >= payload) break;
      uint64_t vc = signed_by(neg1, lose_v[1][j] - lose_v[0][j] - v_alpha[j]);
      if (a) vc += signed_by(neg1, be[j]);  // losing the left branch: x_i = 0 < alpha_i = 1
      v_cw[at * payload + j] = vc;
      v_alpha[j] = v_alpha[j] - keep_v[1][j] + keep_v[0][j] + signed_by(neg1, vc);
    }
    const uint64_t tcw0 = tt[0][0] ^ tt[1][0] ^ a ^ 1, tcw1 = tt[0][1] ^ tt[1][1] ^ a;
    t_cw[2 * at] = static_cast<uint8_t>(tcw0);
    t_cw[2 * at + 1] = static_cast<uint8_t>(tcw1);
    const uint64_t tck = a ? tcw1 : tcw0;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const uint64_t m = uint64_t{0} - t[b];
      s[b].w[0] = keep_s[b].w[0] ^ (scw0 & m);
      s[b].w[1] = keep_s[b].w[1] ^ (scw1 & m);
      t[b] = keep_t[b] ^ (t[b] & tck);
    }
  }
  const Blk c0 = mmo(t0, tweak(s[0], 4)), c1 = mmo(t0, tweak(s[1], 4));
  const uint64_t neg1 = uint64_t{0} - t[1];
  final_cw[e * payload] = signed_by(neg1, c1.w[0] - c0.w[0] - v_alpha[0]);
  if (payload == 2) final_cw[e * payload + 1] = signed_by(neg1, c1.w[1] - c0.w[1] - v_alpha[1]);
}

struct Tables {
  uint32_t rk[44];
  uint32_t t0[256];
  Tables() { aes_tables(rk, t0); }
};

void upload_tables(cudaStream_t stream) {
  static const Tables tables;  // host copies live for the whole process (the copies are asynchronous)
  cuda_check(cudaMemcpyToSymbolAsync(c_round_keys, tables.rk, sizeof(tables.rk), 0, cudaMemcpyHostToDevice, stream),
        "dcf: round keys");
  cuda_check(cudaMemcpyToSymbolAsync(c_t0, tables.t0, sizeof(tables.t0), 0, cudaMemcpyHostToDevice, stream),
        "dcf: T-table");
}

}  // namespace

void ring_matmul_cuda(const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t m, int64_t k, int64_t n,
                      bool accumulate, void* stream) {
  if (m <= 0 || n <= 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  if (k <= 0) {
    if (!accumulate) cuda_check(cudaMemsetAsync(c, 0, static_cast<size_t>(m * n) * sizeof(uint64_t), st), "ring_matmul");
    return;
  }
  const dim3 threads(16, 16), grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((m + kTile - 1) / kTile));
  ring_matmul_kernel<<<grid, threads, 0, st>>>(a, b, c, m, k, n, accumulate);
  cuda_check(cudaGetLastError(), "ring_matmul_cuda launch");
}

void dcf_eval_cuda(int party, const DcfKeys& key, const uint64_t* x, uint64_t* out, int64_t n, int bits, int payload,
                   void* stream) {
  if (n <= 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  upload_tables(st);
  const int threads = 128;
  dcf_eval_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, st>>>(
      party, key.seed, key.s_cw, key.v_cw, key.t_cw, key.final_cw, x, out, n, bits, payload);
  cuda_check(cudaGetLastError(), "dcf_eval_cuda launch");
}

void dcf_gen_cuda(const uint64_t* alpha, const uint64_t* beta, const uint64_t* roots, uint64_t* s_cw, uint64_t* v_cw,
                  uint8_t* t_cw, uint64_t* final_cw, int64_t n, int bits, int payload, void* stream) {
  if (n <= 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  upload_tables(st);
  const int threads = 128;
  dcf_gen_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, st>>>(
      alpha, beta, roots, s_cw, v_cw, t_cw, final_cw, n, bits, payload);
  cuda_check(cudaGetLastError(), "dcf_gen_cuda launch");
}

}  // namespace medfl::smpc
