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
// Profiles: Profile::Ds4 as ds4 (activation quantisation of Q8_0/IQ2_XXS/Q2_K/Q4_K matmuls, FP8/F16
// KV storage, Hadamard + FP4 indexer rows and queries); Profile::Plain as the CPU's plain profile
// (F32 storage, no QAT), which needs F32/F16 weights everywhere: the CUDA Q8_0 and ds4 expert
// kernels quantise activations, which plain does not, so other types are refused.
// Routed experts: the k-quant mixes (gate/up IQ2_XXS, Q2_K or Q4_K, one type for both; down
// IQ2_XXS, Q2_K or Q4_K: the ds4 mix, the q4_k mix) through ds4::cuda::moe as raw GGUF bytes, any
// other mix of Q8_0/F16/F32 per expert slice through the exact matmul kernels (moe__matvec_exact).
// MTP draft (mtp_draft): the CPU's Session::Impl::mtp_draft on the device: enorm/hnorm, eh_proj
// per HC stream of the trunk's last HC state (kept on the device, last_hc_), the MTP block's
// attention (its own device raw window, ring = window, the CPU layout) and FFN, and its head
// (mtp_hc_*, mtp_norm) with the trunk's output matrix; its cache is part of snapshot()/restore().
// TopkTies::TorchCpu (the HF oracle's tie order): the indexer's scores are downloaded and the
// CPU's topk_torch_cpu_ref selects (oracle mode only); the default rule uses the device top-k.
//
// Not supported on CUDA (clear one-line errors): weight types other than Q8_0/F16/F32 (besides
// the k-quant expert mixes), Profile::Plain with Q8_0 or IQ2_XXS/Q2_K/Q4_K weights.
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
