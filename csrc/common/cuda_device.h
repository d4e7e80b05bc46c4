// The CUDA devices the module sees (cuda_device.cu); compiled only with MEDFL_WITH_CUDA.
#pragma once

namespace medfl::common {

// cudaGetDeviceCount, or 0 where there is no driver or device (the sticky error is cleared).
int cuda_device_count();

}  // namespace medfl::common
