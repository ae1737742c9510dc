// End-to-end CUDA forward (Session, Backend::Cuda) on a DS4 model, normally the flash-shape
// synthetic model (`ds4-synth --preset flash-shape -o FILE`):
//   decode        N=1 decodes after a 256-token prefill (wall time per token; decode() returns
//                 the logits on the host, so each call is synchronous)
//   prefill/N/g   one batched forward of N tokens from position 0, g = strict (all gates exact)
//                 or fast (all gates fast, the default)
// Counters: tok_per_s; for decode also weight_bytes_per_token (bytes of stored weights one token
// reads: every dense matrix, the vocab head, and n_used of n_expert routed experts per layer),
// and hbm_frac = weight_bytes_per_token * tok/s / 3.35e12 (H100 SXM HBM3 peak), the fraction of
// the bandwidth roofline that decode reaches.
//
//   ./build/tests/cuda_forward_bench --model=/tmp/flash.gguf --benchmark_out=out.json --benchmark_out_format=json
// Without a usable device (or without --model) every benchmark is skipped with the reason.
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../support/tiny_models.h"
#include "ds4/cuda_backend.h"
#include "ds4/engine.h"
#include "forward/weights.h"

namespace {

std::string g_model_path;
std::shared_ptr<ds4::Model> g_model;

ds4::Model* model(benchmark::State& state) {
  const ds4::CudaDeviceInfo info = ds4::cuda_device_info();
  if (!info.available) {
    state.SkipWithError(("no usable CUDA device: " + info.why_unavailable).c_str());
    return nullptr;
  }
  if (!g_model) g_model = ds4::Model::load(g_model_path.empty() ? ds4::testing::tiny_model_path("ds4") : g_model_path);
  return g_model.get();
}

size_t bytes_of(const ds4::WeightRef& w) { return w ? static_cast<size_t>(w.n_mat) * w.out * w.row_bytes : 0; }

double weight_bytes_per_token(const ds4::Model& m) {
  const ds4::ModelWeights& w = m.weights();
  const ds4::HParams& hp = m.hparams();
  double b = bytes_of(w.output) + bytes_of(w.output_hc_fn) + static_cast<double>(w.token_embd.row_bytes);
  for (const ds4::LayerWeights& L : w.layers) {
    for (const ds4::WeightRef* r : {&L.hc_attn_fn, &L.hc_ffn_fn, &L.q_a, &L.q_b, &L.kv, &L.out_a, &L.out_b, &L.comp_kv,
                                    &L.comp_gate, &L.idx_q_b, &L.idx_proj, &L.idx_comp_kv, &L.idx_comp_gate, &L.router,
                                    &L.gate_sh, &L.up_sh, &L.down_sh})
      b += bytes_of(*r);
    b += static_cast<double>(bytes_of(L.gate_exps) + bytes_of(L.up_exps) + bytes_of(L.down_exps)) * hp.n_expert_used /
         hp.n_expert;
  }
  return b;
}

std::unique_ptr<ds4::Session> make_session(bool strict) {
  ds4::SessionOptions o;
  o.backend = ds4::Backend::Cuda;
  o.gates = strict ? ds4::GateSet::all_exact() : ds4::GateSet::all_fast();
  o.max_ctx = 2048;
  return std::make_unique<ds4::Session>(g_model, o);
}

void BM_decode(benchmark::State& state) {
  ds4::Model* m = model(state);
  if (!m) return;
  const int V = static_cast<int>(m->hparams().n_vocab);
  const auto prompt = ds4::testing::pseudo_tokens(256, V, 1);
  const auto toks = ds4::testing::pseudo_tokens(1024, V, 2);
  std::unique_ptr<ds4::Session> s;
  try {
    s = make_session(true);
    s->forward(prompt);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  size_t i = 0;
  for (auto _ : state) {
    if (s->pos() + 1 >= 2048) {
      state.PauseTiming();
      s->reset();
      s->forward(prompt);
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(s->decode(toks[i++ % toks.size()]));
  }
  state.SetItemsProcessed(state.iterations());
  const double bpt = weight_bytes_per_token(*m);
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["weight_bytes_per_token"] = bpt;
  state.counters["hbm_frac"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * bpt / 3.35e12, benchmark::Counter::kIsRate);
}

void BM_prefill(benchmark::State& state) {
  ds4::Model* m = model(state);
  if (!m) return;
  const int64_t N = state.range(0);
  const bool strict = state.range(1) == 0;
  const auto toks = ds4::testing::pseudo_tokens(static_cast<int>(N), static_cast<int>(m->hparams().n_vocab), 3);
  std::unique_ptr<ds4::Session> s;
  try {
    s = make_session(strict);
    s->forward(toks);  // warm-up (scratch buffers, cuBLAS workspaces)
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    state.PauseTiming();
    s->reset();
    state.ResumeTiming();
    benchmark::DoNotOptimize(s->forward(toks));
  }
  state.SetItemsProcessed(state.iterations() * N);
  state.counters["tok_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * N), benchmark::Counter::kIsRate);
  state.SetLabel(strict ? "strict" : "fast");
}

BENCHMARK(BM_decode)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(200);
BENCHMARK(BM_prefill)
    ->ArgNames({"N", "fast"})
    ->Args({16, 0})->Args({16, 1})->Args({128, 0})->Args({128, 1})->Args({512, 0})->Args({512, 1})
    ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(5);

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--model=", 8) == 0) g_model_path = argv[i] + 8;
    else rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (const ds4::CudaDeviceInfo info = ds4::cuda_device_info(); info.available)
    benchmark::AddCustomContext("device", info.name);
  benchmark::AddCustomContext("model", g_model_path.empty() ? "tiny (ds4 mix)" : g_model_path);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_model.reset();
  return 0;
}
