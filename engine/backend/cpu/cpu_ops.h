// The CPU backend of the forward graph: BackendOps (forward/backend_ops.h) on host memory with
// the reference kernels of engine/ops/*/*_ref.cpp and the CPU fast variants behind the gates.
#pragma once
#include <memory>

#include "ds4/engine.h"
#include "forward/backend_ops.h"

namespace ds4 {

std::unique_ptr<BackendOps> make_cpu_ops(const Model& model, const SessionOptions& opt);

}  // namespace ds4
