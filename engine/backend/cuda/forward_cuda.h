// The CUDA backend of the forward graph: the BackendOps (engine/forward/backend_ops.h) of
// SessionOptions::backend == Cuda. The graph itself (engine/forward/graph.cpp, attention_layer.cpp,
// ffn_layer.cpp) is the CPU's: the order of the ops, taps, fault injection, gate choices and the
// snapshot layout live there once; this backend owns device memory, the per-Model device
// weights, the device caches and the kernel launches.
//
// The cache part runs over chunks of 256 rows (chunk_rows()): the trunk layers' KV ring holds
// window + chunk rows, so no row of a chunk overwrites a position another row of it still sees.
// Every exact kernel computes each row with the same per-row reduction order as N = 1 decode, so
// with GateSet::all_exact() forward(tokens) is bit-equal to N decodes by construction
// (tests/unit/cuda_forward_test.cpp checks it).
//
// Files: forward_cuda.cpp (device memory, weights cache, state, matmul kernels),
// forward_cuda_attn.cpp (row-independent ops, caches, indexer, attention), forward_cuda_ffn.cpp
// (routed experts), forward_cuda_kernels.{h,cu} (glue kernels, libds4_cuda). With -DDS4_CUDA=OFF
// only engine/backend/cuda_stub/forward_cuda_stub.cpp is built: make_cuda_ops throws.
//
// Host work that stays on the host (the graph's): the embedding row lookup (N rows uploaded), the
// router's top-k selection (its N x n_expert logits are downloaded; route_ref is the CPU's),
// candidate lists of the attention (index arithmetic). Every weight matmul, norm, RoPE, HC,
// compressor, indexer, top-k, attention and MoE step runs on the device.
//
// Profiles: Profile::Ds4 as ds4 (activation quantisation of Q8_0/IQ2_XXS/Q2_K/Q4_K matmuls, FP8/F16
// KV storage, Hadamard + FP4 indexer rows and queries); Profile::Plain as the CPU's plain profile
// (F32 storage, no QAT), which needs F32/F16 weights everywhere: the CUDA Q8_0 and ds4 expert
// kernels quantise activations, which plain does not, so other types are refused.
// Routed experts: the k-quant mixes (gate/up IQ2_XXS, Q2_K or Q4_K, one type for both; down
// IQ2_XXS, Q2_K or Q4_K: the ds4 mix, the q4_k mix) through ds4::cuda::moe as raw GGUF bytes, any
// other mix of Q8_0/F16/F32 per expert slice through the exact matmul kernels (moe__matvec_exact).
// MTP draft: the graph's, on the device: the trunk's last HC state stays on the device
// (last_hc_), the MTP block has its own device raw window (ring = window, the CPU layout), part
// of save_state()/load_state(). The sidecar's e_proj/h_proj head has no device copy (Session
// refuses a sidecar on CUDA).
// TopkTies::TorchCpu (the HF oracle's tie order): the graph downloads the indexer's scores and
// the CPU's topk_torch_cpu_ref selects (oracle mode only); the default rule uses the device top-k.
//
// Not supported on CUDA (clear one-line errors): weight types other than Q8_0/F16/F32 (besides
// the k-quant expert mixes), Profile::Plain with Q8_0 or IQ2_XXS/Q2_K/Q4_K weights.
#pragma once
#include <cstdint>
#include <memory>

#include "ds4/engine.h"
#include "forward/backend_ops.h"

namespace ds4 {

// Byte cap of the forward's device allocations from DS4_CUDA_MEM_LIMIT_MB (engine/config.cpp);
// 0 = no cap.
int64_t cuda_forward_mem_limit_bytes();

// Throws ds4::Error (one line) when CUDA is not built, no device is present, the options are
// unsupported, or a device allocation fails ("CUDA out of memory allocating N bytes for ...").
std::unique_ptr<BackendOps> make_cuda_ops(std::shared_ptr<const Model> model, const SessionOptions& opt);

}  // namespace ds4
