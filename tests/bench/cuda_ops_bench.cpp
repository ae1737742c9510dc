// CUDA op kernel pairs (engine/backend/cuda/ops_cuda.h) at the DeepSeek V4 Flash shapes, exact
// next to fast, for N = 1, 2, 4, 8, 16, 128, 512 token rows (issue 6). The matmul family is in
// cuda_matmul_bench.cpp; this program follows its protocol.
//   attn_dense      attn_dense__serial_dot (exact) vs attn_dense__lane8_dot (fast): 64 heads x
//                   512, one shared KV head, 128 raw rows + all 1024 compressed rows (a ratio-128
//                   layer at 128k context): 1152 candidates per token.
//   attn_indexed    attn_indexed__scalar (exact) vs attn_indexed__heads8_online (fast): 128 raw
//                   rows + 512 selected of 4096 compressed rows (a ratio-4 layer at 16k context),
//                   the selection random and in random (score) order per token.
//   indexer_scores  indexer_scores__direct_one (exact) vs __scalar vs __wmma_f16: 64 heads x 128
//                   over 4096 compressed rows (context 16k at ratio 4); token t of N sees
//                   4096 - (N-1-t)/4 rows (causal, the last N positions of the context).
//   topk            topk__score_order (exact) vs topk__resort_ascending: k = 512 of 4096 scores
//                   (random normal, same visibility as indexer_scores).
//   moe             moe__decode_lut (exact) vs moe__sorted_exact (exact, batched) vs
//                   moe__expert_tiles (fast): d 4096, ff 2048, 256 experts, top-6 routing
//                   uniform without repeats per token; random IQ2_XXS gate/up and Q2_K down bytes
//                   for all 256 experts (f16 scales fixed, so finite), as
//                   tests/unit/cuda_ops_test.cpp builds them; mid kept in scratch.
//   moe_q4k         the same three variants and routing with Q4_K gate/up/down (the Q4_K model).
// Names: <pair>/<variant>/N:<n>. Raw rows of token t are rows t .. t+127 of a pool of N+127 rows
// (a sliding window over the batch), so the batch reads N+127 distinct raw rows.
//
//   ./build/tests/cuda_ops_bench --benchmark_out=ops.json --benchmark_out_format=json
//   ./build/tests/cuda_ops_bench --benchmark_filter='^moe/.*/N:(1|512)$'
//
// Timing: CUDA events around one call (quantisation / sort / scratch work of the variant
// included), manual time. Before every iteration L2 is flushed by a 128 MiB memset plus a 128 MiB
// read pass (see cuda_matmul_bench.cpp for why both). floor/noop times an empty kernel under the
// same protocol. Fixed iterations: 50 (N <= 16), 10 (N = 128), 5 (N = 512). Counters:
//   bytes_per_second  distinct bytes the call must move (weights / KV rows / q / scores read,
//                     outputs written; each counted once per call) / time
//   hbm_frac          bytes_per_second / 3.35e12 (H100 SXM HBM3 peak); roofline_us the same bytes
//                     at that peak
//   tflops, fp32_frac useful FLOPs / time and / 67e12 (H100 SXM FP32 non-tensor peak; wmma_f16
//                     runs on tensor cores, whose F16 peak is far higher)
//   items_per_second  token rows / time
//   experts, scratch_MB (moe) distinct experts the batch routes to; moe_scratch_bytes(N, ...)
// Without CUDA built, or without a usable device, it prints one line and exits 0.
#include <benchmark/benchmark.h>

#include <cstdio>

#include "ds4/cuda_backend.h"

#if DS4_HAVE_CUDA
#include "cuda_bench_timing.h"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/l2_flush.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant/quant_detail.h"

namespace ds4 {
namespace {

constexpr double kHbmBytesPerSecond = 3.35e12;  // H100 SXM5 80 GB datasheet
constexpr double kFp32FlopsPerSecond = 67e12;   // H100 SXM5 FP32 (non-tensor) datasheet
constexpr size_t kL2FlushBytes = size_t{128} << 20;
constexpr int64_t kNs[] = {1, 2, 4, 8, 16, 128, 512};
constexpr int kMaxN = 512;

// DeepSeek V4 Flash shapes (ds4-model.md; engine/synth preset_flash_shape, 256 experts).
constexpr int kHead = 64, kHeadDim = 512, kRaw = 128;
constexpr int kDenseComp = 1024;   // ratio-128 layer at 128k context
constexpr int kIdxComp = 4096;     // ratio-4 layer at 16k context
constexpr int kTopK = 512;
constexpr int kIdxHead = 64, kIdxHeadDim = 128;
constexpr int kExpert = 256, kUsed = 6;
constexpr int64_t kD = 4096, kFf = 2048;
constexpr int64_t kIq2RowBytes = kD / 256 * 66;   // gate/up row (d values), IQ2_XXS
constexpr int64_t kQ2kRowBytes = kFf / 256 * 84;  // down row (ff values), Q2_K
constexpr int64_t kQ4kGuRowBytes = kD / 256 * 144;   // gate/up row, Q4_K (moe_q4k)
constexpr int64_t kQ4kDownRowBytes = kFf / 256 * 144;  // down row, Q4_K (moe_q4k)

struct Cost {
  double bytes = 0, flops = 0;
};

uint64_t splitmix64(uint64_t& st) {
  uint64_t z = (st += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
cuda::DeviceBuffer to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer b(v.size() * sizeof(T));
  b.upload(v.data(), b.size());
  return b;
}

std::vector<float> normals(size_t n, float sd, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Random quant blocks filling a whole device buffer, generated and uploaded in 8 MiB chunks; the
// f16 scale at d_off (and dmin at dmin_off >= 0) set to d (and d/2) so every value is finite.
void fill_random_blocks(cuda::DeviceBuffer& buf, int block_bytes, int d_off, int dmin_off,
                        float d, uint64_t seed) {
  const size_t chunk = (size_t{8} << 20) / block_bytes * block_bytes;
  std::vector<uint8_t> h(chunk + 8);
  const uint16_t hd = f32_to_f16(d), hdm = f32_to_f16(0.5f * d);
  for (size_t off = 0; off < buf.size(); off += chunk) {
    const size_t n = std::min(chunk, buf.size() - off);
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t z = splitmix64(seed);
      std::memcpy(&h[i], &z, 8);
    }
    for (size_t b = 0; b < n; b += block_bytes) {
      std::memcpy(&h[b + d_off], &hd, 2);
      if (dmin_off >= 0) std::memcpy(&h[b + dmin_off], &hdm, 2);
    }
    buf.upload(h.data(), n, off);
  }
}

// ---- problem data: built once for N = 512, every benchmark uses the first N token rows --------

struct AttnProblem {
  int n_comp = 0, max_cand = 0;
  cuda::DeviceBuffer q, kv, cand, n_cand, sinks, out;
  std::vector<int32_t> host_cand;  // (kMaxN, max_cand)

  AttnProblem(int n_comp_rows, int n_sel, uint32_t seed) : n_comp(n_comp_rows) {
    const int raw_pool = kMaxN + kRaw - 1;  // token t: raw rows t .. t+127
    max_cand = kRaw + (n_sel ? n_sel : n_comp);
    std::mt19937 g(seed);
    host_cand.resize(static_cast<size_t>(kMaxN) * max_cand);
    std::vector<int32_t> perm(n_comp);
    for (int t = 0; t < kMaxN; ++t) {
      int32_t* c = &host_cand[static_cast<size_t>(t) * max_cand];
      int k = 0;
      for (int i = 0; i < kRaw; ++i) c[k++] = t + i;
      std::iota(perm.begin(), perm.end(), 0);
      if (n_sel) std::shuffle(perm.begin(), perm.end(), g);
      for (int i = 0; i < max_cand - kRaw; ++i) c[k++] = raw_pool + perm[i];
    }
    q = to_device(normals(static_cast<size_t>(kMaxN) * kHead * kHeadDim, 1.0f, seed + 1));
    kv = to_device(normals(static_cast<size_t>(raw_pool + n_comp) * kHeadDim, 1.0f, seed + 2));
    cand = to_device(host_cand);
    n_cand = to_device(std::vector<int32_t>(kMaxN, max_cand));
    sinks = to_device(normals(kHead, 1.0f, seed + 3));
    out = cuda::DeviceBuffer(q.size());
  }

  Cost cost(int64_t n) const {
    std::set<int32_t> rows(host_cand.begin(), host_cand.begin() + n * max_cand);
    const double qo = 2.0 * n * kHead * kHeadDim * 4;
    return {qo + static_cast<double>(rows.size()) * kHeadDim * 4,
            4.0 * n * kHead * max_cand * kHeadDim};  // q.k and p.v, 2 FLOPs per MAC
  }

  void run(int64_t n, cuda::AttnVariant v) const {
    cuda::AttnArgs a;
    a.q = q.as<float>();
    a.kv = kv.as<float>();
    a.cand = cand.as<int32_t>();
    a.n_cand = n_cand.as<int32_t>();
    a.sinks = sinks.as<float>();
    a.out = out.as<float>();
    a.n_tok = n;
    a.n_head = kHead;
    a.head_dim = kHeadDim;
    a.max_cand = max_cand;
    a.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    cuda::attention(a, v);
  }
};

// Visible compressed rows of token t of n (the last n positions of a 16k context, ratio 4).
std::vector<int32_t> visible_rows(int64_t n) {
  std::vector<int32_t> v(n);
  for (int64_t t = 0; t < n; ++t) v[t] = static_cast<int32_t>(kIdxComp - (n - 1 - t) / 4);
  return v;
}

struct IndexerProblem {
  cuda::DeviceBuffer q, w, K, scores, topk_scores, n_vis, idx, count;  // first N rows used
  IndexerProblem()
      : q(to_device(normals(static_cast<size_t>(kMaxN) * kIdxHead * kIdxHeadDim, 1.0f, 11))),
        w(to_device(normals(static_cast<size_t>(kMaxN) * kIdxHead, 1.0f, 12))),
        K(to_device(normals(static_cast<size_t>(kIdxComp) * kIdxHeadDim, 1.0f, 13))),
        scores(static_cast<size_t>(kMaxN) * kIdxComp * sizeof(float)),
        topk_scores(to_device(normals(static_cast<size_t>(kMaxN) * kIdxComp, 1.0f, 14))),
        n_vis(kMaxN * sizeof(int32_t)),
        idx(static_cast<size_t>(kMaxN) * kTopK * sizeof(int32_t)),
        count(kMaxN * sizeof(int32_t)) {}

  void set_visible(int64_t n) {
    const std::vector<int32_t> v = visible_rows(n);
    n_vis.upload(v.data(), v.size() * sizeof(int32_t));
  }
};

// IQ2_XXS gate/up + Q2_K down (the Flash GGUF), or with q4k Q4_K for all three (moe_q4k).
struct MoeProblem {
  bool q4k = false;
  int64_t expert_bytes = 0;
  cuda::DeviceBuffer gate, up, down, grid, x, experts, weights, y, scratch;
  std::vector<int32_t> host_experts;  // (kMaxN, kUsed)

  explicit MoeProblem(bool q4k_ = false)
      : q4k(q4k_),
        expert_bytes(2 * kFf * (q4k ? kQ4kGuRowBytes : kIq2RowBytes) +
                     kD * (q4k ? kQ4kDownRowBytes : kQ2kRowBytes)),
        gate(static_cast<size_t>(kExpert) * kFf * (q4k ? kQ4kGuRowBytes : kIq2RowBytes)),
        up(gate.size()),
        down(static_cast<size_t>(kExpert) * kD * (q4k ? kQ4kDownRowBytes : kQ2kRowBytes)) {
    if (q4k) {  // d scales as tests/unit/cuda_ops_test.cpp's Q4_K experts
      fill_random_blocks(gate, 144, 0, 2, 2e-4f, 21);
      fill_random_blocks(up, 144, 0, 2, 2e-4f, 22);
      fill_random_blocks(down, 144, 0, 2, 1e-4f, 23);
    } else {
      fill_random_blocks(gate, 66, 0, -1, 2e-3f, 21);
      fill_random_blocks(up, 66, 0, -1, 2e-3f, 22);
      fill_random_blocks(down, 84, 80, 82, 1e-3f, 23);
    }
    grid = to_device(std::vector<uint64_t>(quant_detail::kIq2xxsGrid,
                                           quant_detail::kIq2xxsGrid + 256));
    std::mt19937 g(24);
    std::vector<float> wts;
    for (int t = 0; t < kMaxN; ++t) {
      std::vector<int32_t> sel;
      while (static_cast<int>(sel.size()) < kUsed) {
        const int32_t e = std::uniform_int_distribution<int32_t>(0, kExpert - 1)(g);
        if (std::find(sel.begin(), sel.end(), e) == sel.end()) sel.push_back(e);
      }
      for (int32_t e : sel) {
        host_experts.push_back(e);
        wts.push_back(std::uniform_real_distribution<float>(0.1f, 0.5f)(g));
      }
    }
    experts = to_device(host_experts);
    weights = to_device(wts);
    x = to_device(normals(static_cast<size_t>(kMaxN) * kD, 1.0f, 25));
    y = cuda::DeviceBuffer(x.size());
    scratch = cuda::DeviceBuffer(std::max({scratch_bytes(kMaxN, cuda::MoeVariant::decode_lut),
                                           scratch_bytes(kMaxN, cuda::MoeVariant::expert_tiles),
                                           scratch_bytes(kMaxN, cuda::MoeVariant::sorted_exact)}));
  }

  static size_t scratch_bytes(int64_t n, cuda::MoeVariant v) {
    return cuda::moe_scratch_bytes(n, kUsed, kExpert, kD, kFf, v);
  }
  size_t distinct_experts(int64_t n) const {
    return std::set<int32_t>(host_experts.begin(), host_experts.begin() + n * kUsed).size();
  }
  Cost cost(int64_t n) const {
    const double act = 2.0 * n * kD * 4 + n * kUsed * 8.0;
    return {static_cast<double>(distinct_experts(n)) * expert_bytes + act,
            2.0 * n * kUsed * 3 * kD * kFf};
  }

  void run(int64_t n, cuda::MoeVariant v) const {
    cuda::MoeArgs a;
    a.gate = gate.get();
    a.up = up.get();
    a.down = down.get();
    a.gate_up_type = q4k ? cuda::ExpertType::q4_k : cuda::ExpertType::iq2_xxs;
    a.down_type = q4k ? cuda::ExpertType::q4_k : cuda::ExpertType::q2_k;
    a.x = x.as<float>();
    a.experts = experts.as<int32_t>();
    a.weights = weights.as<float>();
    a.iq2_grid = grid.as<uint64_t>();
    a.y = y.as<float>();
    a.scratch = scratch.get();
    a.n_tok = n;
    a.n_expert = kExpert;
    a.n_used = kUsed;
    a.d = kD;
    a.ff = kFf;
    a.limit = 10.0f;  // SwiGLU clamp of the Flash config
    cuda::moe(a, v);
  }
};

// ---- timing -----------------------------------------------------------------------------------

struct Flush {
  cuda::DeviceBuffer flush{kL2FlushBytes}, flush_read{kL2FlushBytes}, sink{256};
  Flush() { flush_read.fill_async(0); }
};

template <class T>
T& lazy() {
  static T t;
  return t;
}
AttnProblem& dense_problem() {
  static AttnProblem p(kDenseComp, 0, 1);
  return p;
}
AttnProblem& indexed_problem() {
  static AttnProblem p(kIdxComp, kTopK, 2);
  return p;
}

int64_t iterations_for(int64_t n) { return n >= 512 ? 5 : n >= 128 ? 10 : 50; }

// Times `body` (one call of the measured work) with an L2 flush before each iteration.
template <class Body>
void timed_loop(benchmark::State& state, Cost c, int64_t n, Body body) {
  const double mean_s = cuda_bench::timed_flushed_loop(state, lazy<Flush>(), body);
  const double iters = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(c.bytes * iters));
  state.SetItemsProcessed(n * state.iterations());
  state.counters["hbm_frac"] = c.bytes / mean_s / kHbmBytesPerSecond;
  state.counters["roofline_us"] = c.bytes / kHbmBytesPerSecond * 1e6;
  if (c.flops > 0) {
    state.counters["tflops"] = c.flops / mean_s * 1e-12;
    state.counters["fp32_frac"] = c.flops / mean_s / kFp32FlopsPerSecond;
  }
}

// Runs `fn` and turns a ds4::Error (bad arguments, CUDA errors) into a skipped benchmark.
template <class Fn>
void guarded(benchmark::State& state, Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
}

void bm_noop(benchmark::State& state) {
  guarded(state, [&] { timed_loop(state, {}, 1, [] { cuda::launch_noop(); }); });
}

void bm_attn(benchmark::State& state, bool dense, cuda::AttnVariant v) {
  guarded(state, [&] {
    const int64_t n = state.range(0);
    const AttnProblem& p = dense ? dense_problem() : indexed_problem();
    state.SetLabel(dense ? "raw128+comp1024 h64x512" : "raw128+sel512of4096 h64x512");
    timed_loop(state, p.cost(n), n, [&] { p.run(n, v); });
  });
}

void bm_indexer(benchmark::State& state, cuda::IndexerVariant v) {
  guarded(state, [&] {
    const int64_t n = state.range(0);
    IndexerProblem& p = lazy<IndexerProblem>();
    p.set_visible(n);
    state.SetLabel("rows4096 h64x128");
    // q, w and K read, scores written (F32).
    const double bytes = 4.0 * (n * kIdxHead * (kIdxHeadDim + 1) +
                                static_cast<double>(kIdxComp) * kIdxHeadDim + n * kIdxComp);
    const Cost c{bytes, 2.0 * n * kIdxHead * kIdxComp * kIdxHeadDim};
    timed_loop(state, c, n, [&] {
      cuda::IndexerArgs a;
      a.q = p.q.as<float>();
      a.w = p.w.as<float>();
      a.K = p.K.as<float>();
      a.n_visible = p.n_vis.as<int32_t>();
      a.scores = p.scores.as<float>();
      a.n_tok = n;
      a.n_rows = kIdxComp;
      a.n_head = kIdxHead;
      a.head_dim = kIdxHeadDim;
      cuda::indexer_scores(a, v);
    });
  });
}

void bm_topk(benchmark::State& state, cuda::TopkVariant v) {
  guarded(state, [&] {
    const int64_t n = state.range(0);
    IndexerProblem& p = lazy<IndexerProblem>();
    p.set_visible(n);
    state.SetLabel("k512 of 4096");
    const Cost c{4.0 * n * (kIdxComp + kTopK + 1), 0.0};
    timed_loop(state, c, n, [&] {
      cuda::topk(p.topk_scores.as<float>(), p.n_vis.as<int32_t>(), n, kIdxComp, kTopK,
                 p.idx.as<int32_t>(), p.count.as<int32_t>(), v);
    });
  });
}

struct MoeProblemQ4K : MoeProblem {
  MoeProblemQ4K() : MoeProblem(true) {}
};

void bm_moe(benchmark::State& state, cuda::MoeVariant v, bool q4k) {
  guarded(state, [&] {
    const int64_t n = state.range(0);
    const MoeProblem& p = q4k ? static_cast<const MoeProblem&>(lazy<MoeProblemQ4K>())
                              : lazy<MoeProblem>();
    state.SetLabel(q4k ? "e256 top6 d4096 ff2048 q4_k/q4_k" : "e256 top6 d4096 ff2048 iq2_xxs/q2_k");
    state.counters["experts"] = static_cast<double>(p.distinct_experts(n));
    state.counters["scratch_MB"] = static_cast<double>(MoeProblem::scratch_bytes(n, v)) / 1048576.0;
    timed_loop(state, p.cost(n), n, [&] { p.run(n, v); });
  });
}

template <class Fn, class... Args>
void register_pair(const std::string& pair, const char* variant, Fn fn, Args... args) {
  for (int64_t n : kNs) {
    benchmark::RegisterBenchmark((pair + "/" + variant).c_str(), fn, args...)
        ->ArgName("N")
        ->Arg(n)
        ->Iterations(iterations_for(n))
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

void register_all() {
  using A = cuda::AttnVariant;
  using I = cuda::IndexerVariant;
  using T = cuda::TopkVariant;
  using M = cuda::MoeVariant;
  benchmark::RegisterBenchmark("floor/noop", bm_noop)
      ->Iterations(100)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  for (A v : {A::dense_serial_dot, A::dense_lane8_dot})
    register_pair("attn_dense", cuda::variant_name(v), bm_attn, true, v);
  for (A v : {A::indexed_scalar, A::indexed_heads8_online})
    register_pair("attn_indexed", cuda::variant_name(v), bm_attn, false, v);
  for (I v : {I::direct_one, I::scalar, I::wmma_f16})
    register_pair("indexer_scores", cuda::variant_name(v), bm_indexer, v);
  for (T v : {T::score_order, T::resort_ascending})
    register_pair("topk", cuda::variant_name(v), bm_topk, v);
  for (M v : {M::decode_lut, M::sorted_exact, M::expert_tiles})
    register_pair("moe", cuda::variant_name(v), bm_moe, v, false);
  for (M v : {M::decode_lut, M::sorted_exact, M::expert_tiles})
    register_pair("moe_q4k", cuda::variant_name(v), bm_moe, v, true);
}

}  // namespace
}  // namespace ds4
#endif  // DS4_HAVE_CUDA

int main(int argc, char** argv) {
#if DS4_HAVE_CUDA
  const ds4::CudaDeviceInfo info = ds4::cuda_device_info();
  if (!info.available) {
    std::printf("cuda_ops_bench: skipped, no usable CUDA device: %s\n",
                info.why_unavailable.c_str());
    return 0;
  }
  benchmark::AddCustomContext("device", info.name);
  ds4::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
#else
  (void)argc;
  (void)argv;
  std::printf("cuda_ops_bench: skipped, CUDA backend not built (-DDS4_CUDA=OFF)\n");
  return 0;
#endif
}
