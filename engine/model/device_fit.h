// Does a model fit a device before anything is uploaded? The CUDA backend asks this once per
// model, so that a model too big for the card is one line naming the bytes needed and available
// instead of an allocation failure half-way through the upload (or, with managed memory, a hung
// GPU). Plain C++: the arithmetic and the message are tested on machines without a GPU.
#pragma once
#include <cstdint>
#include <string>

namespace ds4 {

class Model;

// Bytes of the model's tensors that the CUDA backend keeps on the device: every tensor of the
// trunk (and of a paired MTP sidecar) except token_embd, whose rows are read on the host. A lower
// bound of what an upload takes: caches and activations come on top (their allocations keep
// their own one-line out-of-memory error).
int64_t device_weight_bytes(const Model& model);

// "" when `need` bytes fit in `available` bytes, else the one-line error: the bytes needed and
// available (and in GiB), the device's name, what limited the available bytes (`limited_by`,
// e.g. "free device memory" or "DS4_CUDA_MEM_LIMIT_MB"), and that nothing was uploaded.
std::string device_fit_error(int64_t need, int64_t available, const std::string& device, const std::string& limited_by);

}  // namespace ds4
