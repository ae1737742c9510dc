// The DS4 forward pass on the CUDA backend: the Session of SessionOptions::backend == Cuda.
//
// Same structure as the CPU forward (engine/forward/session.cpp): layer-major over the N rows of
// a call; row-independent projections batched through cuda_matmul (exact per-row kernels or the
// gated fast variants), row-independent elementwise ops batched over rows; the cache part (KV
// ring, compressors, indexer, attention) batched over chunks of rows whose candidate lists are
// built exactly as the rows' decodes see them. Every exact path computes each row with the same
// per-row reduction order as N = 1 decode, so with GateSet::all_exact() forward(tokens) is
// bit-equal to N decodes by construction (tests/unit/cuda_forward_test.cpp checks it).
//
// Files: forward_cuda.cpp (session, state, weights cache, taps, matmul dispatch),
// forward_cuda_attn.cpp (attention sublayer), forward_cuda_ffn.cpp (FFN sublayer, output head),
// forward_cuda_kernels.{h,cu} (glue kernels, libds4_cuda). With -DDS4_CUDA=OFF only
// engine/backend/cuda_stub/forward_cuda_stub.cpp is built: CudaSession::create throws.
//
// Host work that stays on the host: the embedding row lookup (N rows uploaded), the router's
// top-k selection (its N x n_expert logits are downloaded; route_ref is the CPU's), candidate
// lists of the attention (index arithmetic). Every weight matmul, norm, RoPE, HC, compressor,
// indexer, top-k, attention and MoE step runs on the device.
//
// Not supported on CUDA (clear one-line errors): Profile::Plain, TopkTies::TorchCpu, mtp_draft,
// expert tensors other than IQ2_XXS gate/up + Q2_K down (the ds4 mix), weight types other than
// Q8_0/F16/F32 for the dense matrices.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "ds4/engine.h"

namespace ds4 {

// Byte cap of the forward's device allocations from DS4_CUDA_MEM_LIMIT_MB (engine/config.cpp);
// 0 = no cap.
int64_t cuda_forward_mem_limit_bytes();

class CudaSession {
 public:
  // Throws ds4::Error (one line) when CUDA is not built, no device is present, the options are
  // unsupported, or a device allocation fails ("CUDA out of memory allocating N bytes for ...").
  static std::unique_ptr<CudaSession> create(std::shared_ptr<const Model> model, const SessionOptions& opt,
                                             TapSink** taps);
  virtual ~CudaSession() = default;
  virtual std::vector<float> forward(std::span<const int32_t> tokens) = 0;
  virtual int64_t pos() const = 0;
  virtual std::shared_ptr<const SessionState> snapshot() const = 0;
  virtual void restore(const SessionState& state) = 0;
  virtual void reset() = 0;
  virtual void set_gates(const GateSet& gates) = 0;
  virtual std::vector<float> mtp_draft(int32_t next_token) = 0;
};

}  // namespace ds4
