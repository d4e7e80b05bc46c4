// The CUDA helpers every topic's .cu uses: the error check after a runtime call or a launch, and
// the grid size of a grid-stride loop.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace medfl::common {

// Throws std::runtime_error("<what>: <CUDA error string>") unless err is cudaSuccess (pybind11
// turns it into RuntimeError).
inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Blocks of `threads` threads for a grid-stride loop over `work` items: ceil(work / threads),
// at least 1 and at most max_blocks (each topic picks its cap; the loops cover the rest).
inline unsigned grid_for(int64_t work, int64_t threads, int64_t max_blocks) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

}  // namespace medfl::common
