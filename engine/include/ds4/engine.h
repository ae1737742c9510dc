// The DS4 engine: a loaded model and a session that runs it on the CPU reference backend.
//
// Two call shapes: decode(token) (N = 1) and forward(tokens) (batched, N rows). Both leave the
// same KV, compressor and indexer state; snapshot()/restore() let a speculative verifier roll back
// rejected rows. The CPU reference is the exact path: forward(tokens) is bit-equal to N decodes.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ds4/gates.h"
#include "ds4/model.h"

namespace ds4 {

class GgufFile;
class Tokenizer;

// Numerics profile (part of every run's description).
//   ds4:   FP8 E4M3 round trip + F16 storage of KV rows, Hadamard + FP4 on the indexer, int8 (Q8_0)
//          / Q8_K activation quantisation before quantised dots: what the ds4 reference computes.
//   plain: none of these (F32 activations against dequantised weights, F32 caches), as
//          llama.cpp with an F32 cache and HF transformers compute.
enum class Profile { Ds4, Plain };
const char* profile_name(Profile p);
Profile profile_from_name(const std::string& name);  // throws naming the value

// Receives named intermediate tensors (ds4-model.md §12 names) as they are computed.
// layer = -1 for tensors outside the trunk layers (the output head), n_layer for the MTP block;
// pos is the absolute position; `variant` names the kernel variant that produced the tensor
// (provenance, e.g. "matvec__ref" or "matmul_q8__gemm_f16"). Capturing never changes which
// kernel runs: the sink only reads.
class TapSink {
 public:
  virtual ~TapSink() = default;
  virtual void tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
                   const char* variant) = 0;
  // Called once per forward() with the positions it covers, before any tap of that call.
  virtual void begin_forward(int64_t first_pos, int64_t n_rows) {}
  // A verifier restored a snapshot: rows at positions >= pos will be produced again.
  virtual void rollback(int64_t pos) {}
};

// Build identity for run manifests.
const char* engine_version();
const char* engine_git_sha();

struct LayerWeights;
struct ModelWeights;

// A loaded model: hyperparameters, bound weights (pointing into the mmap), tokenizer.
class Model {
 public:
  // Loads and validates a GGUF file (throws ds4::Error naming the key or tensor at fault).
  // A trunk whose nextn_predict_layers = 1 but which holds no blk.<n_layer>.* tensors (the
  // published file) loads without its MTP block: that block ships as a separate sidecar.
  // `mtp_path` (optional) is such a sidecar (general.architecture deepseek4_mtp_support, mtp.0.*
  // tensors): it is checked against the trunk and paired with it, so has_mtp() and
  // Session::mtp_draft work. A trunk with its own MTP block takes no sidecar.
  static std::shared_ptr<Model> load(const std::string& path, const std::string& mtp_path = "");
  ~Model();
  const HParams& hparams() const { return hp_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GgufFile& file() const { return *file_; }
  const ModelWeights& weights() const { return *weights_; }
  const std::string& path() const;
  bool has_mtp() const { return hp_.n_mtp > 0; }
  // The MTP sidecar paired with the trunk ("" if none: no MTP, or the block is in the trunk).
  const std::string& mtp_path() const { return mtp_path_; }

 private:
  Model() = default;
  HParams hp_;
  std::shared_ptr<GgufFile> file_;
  std::shared_ptr<GgufFile> mtp_file_;  // the sidecar's mapping, alive as long as its weights
  std::string mtp_path_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelWeights> weights_;
};

// Which rows the indexer keeps among equal scores at the top-k boundary.
//   lower_index: the lower row id wins (ds4, and our CUDA kernels): deterministic and
//                independent of how many rows the query sees.
//   torch_cpu:   PyTorch's CPU topk (HF transformers), for reproducing the HF oracle only; with
//                torch_queue_len = 0 it is HF's decode path, with the number of compressed rows
//                of the whole prompt it is HF's prefill path (see ops/indexer/indexer.h).
enum class TopkTies { LowerIndex, TorchCpu };

// Negative control: adds one ULP (nextafter toward +inf) to element `element` of the tensor
// tapped as (layer, tap) at position `pos`, in place, so the change propagates through the rest of
// the forward exactly as a one-ULP kernel difference would. Off by default.
struct FaultInjection {
  bool enabled = false;
  int layer = 0;
  std::string tap;
  int64_t pos = 0;
  int64_t element = 0;
  // Parses "layer:tap:pos[:element]", e.g. "2:attn_out:17:5"; throws naming the bad field.
  static FaultInjection parse(const std::string& spec);
  std::string to_string() const;
};

// Where a Session runs. Cuda: the forward of engine/backend/cuda/forward_cuda*.cpp (same API,
// states in the CPU layout); construction throws a one-line ds4::Error when CUDA is not built or
// no device is present.
enum class Backend { Cpu, Cuda };
const char* backend_name(Backend b);                 // "cpu" / "cuda"
Backend backend_from_name(const std::string& name);  // throws naming the value

struct SessionOptions {
  Backend backend = Backend::Cpu;
  Profile profile = Profile::Ds4;
  GateSet gates;            // default: every gate fast (the baseline); GateSet::all_exact() = strict
  TopkTies topk_ties = TopkTies::LowerIndex;
  int64_t torch_queue_len = 0;
  int n_threads = 0;        // 0: hardware concurrency
  int64_t max_ctx = 4096;   // positions the session may hold (compressed caches are sized by it)
  FaultInjection fault;     // off by default
  // CPU: byte cap of the cache of dequantised F32 weight copies the GEMM gates use (least
  // recently used copies are dropped; results do not depend on it). 0: DS4_CPU_DEQUANT_CACHE_MB,
  // else 512 MiB.
  int64_t dequant_cache_bytes = 0;
};

struct SessionState;  // KV, compressor and indexer state of every layer, plus the position
class CudaSession;    // the CUDA backend's session (engine/backend/cuda/forward_cuda.h)

class Session {
 public:
  Session(std::shared_ptr<const Model> model, SessionOptions options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // N = 1 decode at the next position; returns the logits (n_vocab).
  std::vector<float> decode(int32_t token);
  // Batched forward of tokens at positions pos()..pos()+N-1; returns N * n_vocab logits, row-major.
  std::vector<float> forward(std::span<const int32_t> tokens);
  // Next position to be written (= number of tokens consumed).
  int64_t pos() const;

  // State for speculative verification: copy, and restore (a verifier rolls back rejected rows
  // by restoring the snapshot and re-running the accepted prefix).
  std::shared_ptr<const SessionState> snapshot() const;  // shared_ptr: SessionState stays opaque
  void restore(const SessionState& state);
  // Clears all state back to position 0.
  void reset();
  // Bytewise comparison of two states (every cache row, compressor/indexer state, position).
  static bool states_equal(const SessionState& a, const SessionState& b);

  // MTP draft (requires a model with an MTP block): from the trunk's final HC state of the last
  // consumed position p and the token accepted for p+1, logits predicting position p+2
  // (DeepSeek V3 nextn pairing, as llama.cpp; ds4-model.md §4.9 notes ds4's different pairing).
  std::vector<float> mtp_draft(int32_t next_token);

  void set_tap_sink(TapSink* sink) { taps_ = sink; }
  // Changes the gate settings for later calls (in-process ablation; no environment involved).
  void set_gates(const GateSet& gates);
  const SessionOptions& options() const { return options_; }
  const Model& model() const { return *model_; }

 private:
  struct Impl;
  std::shared_ptr<const Model> model_;
  SessionOptions options_;
  TapSink* taps_ = nullptr;
  std::unique_ptr<Impl> impl_;         // Backend::Cpu
  std::unique_ptr<CudaSession> cuda_;  // Backend::Cuda
};

// Greedy / temperature sampling helper (lowest index wins ties for argmax).
int32_t argmax(std::span<const float> logits);
int32_t sample_token(std::span<const float> logits, float temperature, uint64_t& rng_state);

}  // namespace ds4
