// The public Session: backend dispatch, fault-spec parsing and state comparison. The forward
// itself is the graph of graph.cpp, attention_layer.cpp and ffn_layer.cpp over BackendOps.
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/forward_cuda.h"
#include "ds4/error.h"
#include "forward/forward_impl.h"

namespace ds4 {

FaultInjection FaultInjection::parse(const std::string& spec) {
  FaultInjection f;
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t c = spec.find(':', start);
    parts.push_back(spec.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  if (parts.size() < 3 || parts.size() > 4 || parts[1].empty())
    fail("bad fault spec '" + spec + "': expected layer:tap:pos[:element]");
  auto num = [&](const std::string& v, const char* what) {
    char* end = nullptr;
    errno = 0;  // hardening: strtoll saturates on overflow; refuse it instead of clamping
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end || errno == ERANGE)
      fail("bad fault spec '" + spec + "': " + what + " '" + v + "' is not an integer");
    return static_cast<int64_t>(x);
  };
  f.enabled = true;
  // hardening: a layer outside int range used to wrap silently (4294967296 became layer 0).
  const int64_t layer = num(parts[0], "layer");
  if (layer < INT_MIN || layer > INT_MAX)
    fail("bad fault spec '" + spec + "': layer '" + parts[0] + "' is out of range");
  f.layer = static_cast<int>(layer);
  f.tap = parts[1];
  f.pos = num(parts[2], "position");
  f.element = parts.size() == 4 ? num(parts[3], "element") : 0;
  if (f.pos < 0 || f.element < 0) fail("bad fault spec '" + spec + "': negative position or element");
  return f;
}

std::string FaultInjection::to_string() const {
  if (!enabled) return "off";
  return std::to_string(layer) + ":" + tap + ":" + std::to_string(pos) + ":" + std::to_string(element);
}

// ---------------------------------------------------------------------------------------------

const char* backend_name(Backend b) { return b == Backend::Cuda ? "cuda" : "cpu"; }
Backend backend_from_name(const std::string& name) {
  if (name == "cpu") return Backend::Cpu;
  if (name == "cuda") return Backend::Cuda;
  fail("unknown backend '" + name + "' (known: cpu, cuda)");
}

// Dispatch: Backend::Cpu runs the graph (Impl) over the CPU ops, Backend::Cuda the CudaSession
// (backend/cuda/forward_cuda.h).
Session::Session(std::shared_ptr<const Model> model, SessionOptions options)
    : model_(std::move(model)), options_(options) {
  if (!model_) fail("Session: no model");
  if (options_.max_ctx <= 0) fail("Session: max_ctx must be positive");
  if (options_.backend == Backend::Cuda && !model_->mtp_path().empty())
    fail("--backend cuda: the MTP block of a sidecar (" + model_->mtp_path() +
         ") runs on the CPU only for now (the CUDA forward has no e_proj/h_proj head)");
  if (options_.backend == Backend::Cuda)
    cuda_ = CudaSession::create(model_, options_, &taps_);
  else
    impl_ = std::make_unique<Impl>(*model_, options_, &taps_, make_cpu_ops(*model_, options_));
}

Session::~Session() = default;

std::vector<float> Session::decode(int32_t token) {
  const int32_t t[1] = {token};
  return forward(std::span<const int32_t>(t, 1));
}

std::vector<float> Session::forward(std::span<const int32_t> tokens) {
  return cuda_ ? cuda_->forward(tokens) : impl_->forward(tokens);
}
int64_t Session::pos() const { return cuda_ ? cuda_->pos() : impl_->pos; }
std::shared_ptr<const SessionState> Session::snapshot() const {
  return cuda_ ? cuda_->snapshot() : impl_->snapshot();
}
void Session::restore(const SessionState& state) {
  if (cuda_) cuda_->restore(state);
  else impl_->restore(state);
}
void Session::reset() {
  if (cuda_) cuda_->reset();
  else impl_->reset();
}
std::vector<float> Session::mtp_draft(int32_t next_token) {
  return cuda_ ? cuda_->mtp_draft(next_token) : impl_->mtp_draft(next_token);
}
void Session::set_gates(const GateSet& gates) {
  if (cuda_) cuda_->set_gates(gates);
  else impl_->opt.gates = gates;
  options_.gates = gates;
}

static bool bytes_equal(const std::vector<float>& a, const std::vector<float>& b) {
  // hardening (UBSan, scripts/test-asan): an empty vector's data() may be null, and memcmp with a
  // null pointer is undefined even for 0 bytes.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

static bool layer_equal(const LayerState& a, const LayerState& b) {
  return bytes_equal(a.raw, b.raw) && bytes_equal(a.comp.kv, b.comp.kv) && bytes_equal(a.comp.score, b.comp.score) &&
         bytes_equal(a.comp_rows, b.comp_rows) && bytes_equal(a.idx_comp.kv, b.idx_comp.kv) &&
         bytes_equal(a.idx_comp.score, b.idx_comp.score) && bytes_equal(a.idx_rows, b.idx_rows);
}

bool Session::states_equal(const SessionState& a, const SessionState& b) {
  if (a.pos != b.pos || a.mtp_pos != b.mtp_pos || a.layers.size() != b.layers.size() || a.mtp.size() != b.mtp.size() ||
      !bytes_equal(a.last_hc, b.last_hc))
    return false;
  for (size_t i = 0; i < a.layers.size(); ++i)
    if (!layer_equal(a.layers[i], b.layers[i])) return false;
  for (size_t i = 0; i < a.mtp.size(); ++i)
    if (!layer_equal(a.mtp[i], b.mtp[i])) return false;
  return true;
}

}  // namespace ds4
