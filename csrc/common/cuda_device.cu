// The CUDA devices the module sees (declared in cuda_device.h).
#include <cuda_runtime.h>

#include "common/cuda_device.h"

namespace medfl::common {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

}  // namespace medfl::common
