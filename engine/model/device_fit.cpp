#include "model/device_fit.h"

#include <cstdio>

#include "ds4/engine.h"
#include "ds4/gguf.h"

namespace ds4 {

namespace {
int64_t tensor_bytes_except_embedding(const GgufFile& f) {
  int64_t sum = 0;
  for (const GgufTensor& t : f.tensors())
    if (t.name != "token_embd.weight") sum += static_cast<int64_t>(t.nbytes);
  return sum;
}

std::string gib(int64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return b;
}
}  // namespace

int64_t device_weight_bytes(const Model& model) {
  int64_t sum = tensor_bytes_except_embedding(model.file());
  if (const GgufFile* sidecar = model.mtp_file()) sum += tensor_bytes_except_embedding(*sidecar);
  return sum;
}

std::string device_fit_error(int64_t need, int64_t available, const std::string& device, const std::string& limited_by) {
  if (need <= available) return "";
  return "--backend cuda: the model's weights need " + std::to_string(need) + " bytes (" + gib(need) +
         ") of device memory, " + device + " has " + std::to_string(available) + " (" + gib(available) + ", " +
         limited_by + "); nothing was uploaded";
}

}  // namespace ds4
