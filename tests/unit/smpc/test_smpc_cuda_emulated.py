"""The DCF CUDA kernels' source run on the host: each thread emulated in turn, against dcf_gen_cpu / dcf_eval_cpu.

GPUs are scarce where these tests usually run, so the part of ``csrc/smpc/smpc_cuda.cu`` that
holds the T-table AES and the DCF kernels is compiled by the host C++ compiler with the CUDA
keywords defined away (one thread per block, blocks run one after the other) and linked with
``dcf_cpu.cpp``. The generated keys must equal ``dcf_gen_cpu``'s bit for bit, and the emulated
evaluation of them must give ``beta [x < alpha]``, on random and edge inputs (alpha 0 and
2^bits - 1, beta 0, n = 1, odd n, 1 and 64 bits, both payload widths). The GPU tests in
test_dealer_cuda.py check the compiled kernel itself.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
HARNESS = r'''// Host emulation of the DCF CUDA kernels (one thread at a time) against dcf_gen_cpu / dcf_eval_cpu.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include "smpc/smpc.h"
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __constant__
struct Dim { unsigned x; };
static Dim threadIdx{0}, blockIdx{0}, blockDim{1};
inline void __syncthreads() {}
namespace medfl::smpc { namespace {
#include "kernel_part.inc"
}
int run(int64_t n, int bits, int payload, int mode, std::mt19937_64& g) {
  uint32_t rk[44], tt[256];
  aes_tables(rk, tt);
  std::memcpy(c_round_keys, rk, sizeof rk);
  std::memcpy(c_t0, tt, sizeof tt);
  std::vector<uint64_t> alpha(n), beta(n * payload), roots(4 * n);
  const uint64_t top = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
  for (auto& a : alpha) a = mode == 1 ? 0 : mode == 2 ? top : g();
  for (auto& b : beta) b = mode == 3 ? 0 : g();
  for (auto& r : roots) r = g();
  std::vector<uint64_t> s1(2 * n * bits), v1(payload * n * bits), f1(payload * n), s2 = s1, v2 = v1, f2 = f1;
  std::vector<uint8_t> t1(2 * n * bits), t2 = t1;
  dcf_gen_cpu(alpha.data(), beta.data(), roots.data(), s1.data(), v1.data(), t1.data(), f1.data(), n, bits, payload,
              AesImpl::kAuto);
  for (int64_t e = 0; e < n; ++e) {
    blockIdx.x = static_cast<unsigned>(e);
    dcf_gen_kernel(alpha.data(), beta.data(), roots.data(), s2.data(), v2.data(), t2.data(), f2.data(), n, bits,
                   payload);
  }
  bool ok = s1 == s2 && v1 == v2 && t1 == t2 && f1 == f2;
  // evaluation of the emulated keys with the emulated eval kernel: sum == beta [x < alpha]
  std::vector<uint64_t> x(n), o0(n * payload), o1(n * payload);
  for (int64_t e = 0; e < n; ++e) x[e] = (e % 3 == 0 ? alpha[e] : e % 3 == 1 ? alpha[e] - 1 : g()) & top;
  for (int party = 0; party < 2; ++party)
    for (int64_t e = 0; e < n; ++e) {
      blockIdx.x = static_cast<unsigned>(e);
      dcf_eval_kernel(party, roots.data() + 2 * n * party, s2.data(), v2.data(), t2.data(), f2.data(), x.data(),
                      party ? o1.data() : o0.data(), n, bits, payload);
    }
  for (int64_t e = 0; e < n; ++e)
    for (int j = 0; j < payload; ++j) {
      const uint64_t want = (x[e] < (alpha[e] & top)) ? beta[e * payload + j] : 0;
      if (o0[e * payload + j] + o1[e * payload + j] != want) ok = false;
    }
  std::printf("n=%lld bits=%d payload=%d mode=%d: %s\n", static_cast<long long>(n), bits, payload, mode,
              ok ? "same as dcf_gen_cpu, evaluates correctly" : "MISMATCH");
  return ok ? 0 : 1;
}
}  // namespace medfl::smpc
int main() {
  std::mt19937_64 g(7);  // test data only
  int bad = 0;
  const int cases[][4] = {{777, 29, 1, 0}, {777, 29, 2, 0}, {513, 64, 2, 0}, {129, 63, 1, 0}, {1, 64, 2, 0},
                          {1, 1, 1, 0}, {65, 1, 2, 1}, {131, 17, 2, 1}, {131, 17, 1, 2}, {257, 64, 2, 2},
                          {99, 31, 2, 3}, {99, 31, 1, 3}};
  for (auto& c : cases) bad += medfl::smpc::run(c[0], c[1], c[2], c[3], g);
  return bad;
}
'''


def test_dcf_kernels_source_matches_the_cpu_kernels(tmp_path: pathlib.Path) -> None:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src = (ROOT / "csrc/smpc/smpc_cuda.cu").read_text()
    start = src.index("// ---------------- AES-128 (T-table) and the DCF")
    part = src[start:src.index("struct Tables {", start)]
    (tmp_path / "kernel_part.inc").write_text(part)
    (tmp_path / "harness.cpp").write_text(HARNESS)
    exe = tmp_path / "harness"
    subprocess.run([cxx, "-std=c++17", "-O1", "-w", f"-I{ROOT / 'csrc'}", str(tmp_path / "harness.cpp"),
                    str(ROOT / "csrc/smpc/dcf_cpu.cpp"), "-o", str(exe)], check=True, capture_output=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("same as dcf_gen_cpu, evaluates correctly") == 12
