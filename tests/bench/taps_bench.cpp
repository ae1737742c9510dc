// Cost of the tap points: decode on the tiny model with taps off (one branch per tap point),
// with a sink that discards everything (the virtual call per tap), and with a stats-level dump
// writer. Run: build/tests/taps_bench --benchmark_format=json
#include <benchmark/benchmark.h>

#include "ds4/dump.h"
#include "ds4/engine.h"
#include "../support/tiny_models.h"

namespace {

class NullSink : public ds4::TapSink {
 public:
  void tap(int, const char*, int64_t, const float*, size_t n, const char*) override { count_ += n; }
  size_t count_ = 0;
};

enum Mode { kOff, kNull, kStats };

void BM_DecodeTaps(benchmark::State& state) {
  auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  const auto tokens = ds4::testing::pseudo_tokens(64, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions so;
  so.n_threads = 1;  // one thread: the per-tap overhead is not hidden behind idle workers
  for (auto _ : state) {
    ds4::Session s(model, so);
    NullSink null_sink;
    std::unique_ptr<ds4::DumpWriter> writer;
    if (state.range(0) == kNull) s.set_tap_sink(&null_sink);
    if (state.range(0) == kStats) {
      writer = std::make_unique<ds4::DumpWriter>("/dev/null.unused", ds4::RunManifest{}, ds4::TapLevel::Stats);
      s.set_tap_sink(writer.get());
    }
    for (int32_t t : tokens) benchmark::DoNotOptimize(s.decode(t));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(tokens.size()));
  state.SetLabel(state.range(0) == kOff ? "taps off" : state.range(0) == kNull ? "null sink" : "stats dump");
}

BENCHMARK(BM_DecodeTaps)->Arg(kOff)->Arg(kNull)->Arg(kStats)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
