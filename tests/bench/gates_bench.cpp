// One benchmark per gate, registered from gates.def: a batched forward of 128 tokens on the tiny
// model with only that gate fast, next to the all-exact (strict) and all-fast runs, so the cost of
// each gate's exactness on the CPU backend is read off one run.
// Run: build/tests/gates_bench --benchmark_format=json
#include <benchmark/benchmark.h>

#include "ds4/engine.h"
#include "ds4/gates.h"
#include "../support/tiny_models.h"

namespace {

void run_forward(benchmark::State& state, const std::string& mix, ds4::GateSet gates) {
  auto model = ds4::Model::load(ds4::testing::tiny_model_path(mix));
  const auto tokens = ds4::testing::pseudo_tokens(128, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions so;
  so.gates = gates;
  so.n_threads = 2;
  for (auto _ : state) {
    ds4::Session s(model, so);
    benchmark::DoNotOptimize(s.forward(tokens));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(tokens.size()));
  state.SetLabel(gates.to_string());
}

const bool registered = [] {
  benchmark::RegisterBenchmark("forward128/strict", [](benchmark::State& s) {
    run_forward(s, "ds4", ds4::GateSet::all_exact());
  })->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("forward128/all_fast", [](benchmark::State& s) {
    run_forward(s, "ds4", ds4::GateSet::all_fast());
  })->Unit(benchmark::kMillisecond);
  for (const ds4::GateInfo& g : ds4::all_gates()) {
    if (!g.on_backend("cpu")) continue;
    const ds4::Gate gate = g.gate;
    const std::string mix = gate == ds4::Gate::f32_gemm ? "f32" : "ds4";  // f32_gemm needs F32 weights
    benchmark::RegisterBenchmark(("forward128/only_fast/" + std::string(g.id)).c_str(), [gate, mix](benchmark::State& s) {
      ds4::GateSet only = ds4::GateSet::all_exact();
      only.set(gate, ds4::GateState::Fast);
      run_forward(s, mix, only);
    })->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
