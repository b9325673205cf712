// The element types plexus's kernels take, as the host code names them to the launchers.
#pragma once

namespace plexus::host::kernels {

enum class Dtype { Float32, BFloat16, Float16 };

}  // namespace plexus::host::kernels
