// Q8_0 matrix-vector kernels on the GPU: matvec_q8_0__decode_warp8 (one launch per activation
// row, what N=1 decode runs N times) against matvec_q8_0__batch_warp8 (one launch, weights read
// once per 8 rows, bit-equal per row), at DS4 projection shapes for N = 1, 2, 4, 8, 16.
//
//   ./build/tests/cuda_matvec_bench                      (all)
//   ./build/tests/cuda_matvec_bench --benchmark_filter='q_b/'
//
// Timing: CUDA events around one call (activation quantisation + the matvec kernels), reported as
// manual time; L2 is flushed before each call by writing a 128 MiB buffer, so the weights come
// from HBM at least on the first pass. Counters:
//   bytes_per_second  weight-matrix bytes / time (the matrix counted once per call, whatever the
//                     variant; the rate at which one forward gets through the projection)
//   items_per_second  activation rows / time
//   weight_passes     how often the kernels walk the matrix: N (decode), ceil(N/8) (batch)
// Without a usable device every benchmark is skipped with the reason.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "ds4/quant.h"
// Engine-internal headers (benchmarks get only engine/include on their include path).
#include "../../engine/backend/cuda/device.h"
#include "../../engine/backend/cuda/matvec_q8_0.h"

namespace ds4 {
namespace {

constexpr int64_t kMaxRows = 16;
constexpr size_t kL2FlushBytes = size_t{128} << 20;  // > 2x the L2 of H100 (50 MB), H200 (60 MB)

struct BenchShape {
  const char* name;  // DS4 tensor: attn_q_b, attn_output_b, attn_q_a
  int64_t in, out;
};
constexpr BenchShape kShapes[] = {{"q_b", 1024, 32768}, {"out_b", 8192, 4096}, {"q_a", 4096, 1024}};

// Device-resident problem of one shape for up to kMaxRows rows, built once per process.
struct Problem {
  cuda::DeviceBuffer w, x, y, xq, xd;
};

Problem& problem(const BenchShape& s) {
  static std::map<std::string, std::unique_ptr<Problem>> cache;
  auto& slot = cache[s.name];
  if (slot) return *slot;
  std::mt19937 rng(42);
  // Random blocks: scale in [2^-10, 2^-6], quants uniform int8 (any bytes are valid Q8_0 quants).
  const size_t w_bytes = cuda::q8_0_matrix_bytes(s.in, s.out);
  std::vector<uint8_t> w(w_bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(1.0f / 1024, 1.0f / 64);
  for (size_t b = 0; b < w_bytes / 34; ++b) {
    const uint16_t d = f32_to_f16(scale(rng));
    w[b * 34] = static_cast<uint8_t>(d & 0xff);
    w[b * 34 + 1] = static_cast<uint8_t>(d >> 8);
    for (int i = 2; i < 34; ++i) w[b * 34 + i] = static_cast<uint8_t>(byte(rng));
  }
  std::vector<float> x(static_cast<size_t>(kMaxRows * s.in));
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (auto& v : x) v = n(rng);
  auto p = std::make_unique<Problem>();
  p->w = cuda::DeviceBuffer(w_bytes);
  p->x = cuda::DeviceBuffer(x.size() * sizeof(float));
  p->y = cuda::DeviceBuffer(static_cast<size_t>(kMaxRows * s.out) * sizeof(float));
  p->xq = cuda::DeviceBuffer(static_cast<size_t>(kMaxRows * s.in));
  p->xd = cuda::DeviceBuffer(static_cast<size_t>(kMaxRows * s.in / 32) * sizeof(float));
  p->w.upload(w.data(), w_bytes);
  p->x.upload(x.data(), p->x.size());
  slot = std::move(p);
  return *slot;
}

void bm_matvec(benchmark::State& state, BenchShape s, CudaMatvecVariant v) {
  const int64_t n_rows = state.range(0);
  const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) {
    state.SkipWithError(("no usable CUDA device: " + info.why_unavailable).c_str());
    return;
  }
  try {
    Problem& p = problem(s);
    static cuda::DeviceBuffer flush(kL2FlushBytes);
    cuda::MatvecQ8_0Args a;
    a.w = p.w.get();
    a.x = p.x.as<float>();
    a.y = p.y.as<float>();
    a.xq = p.xq.as<int8_t>();
    a.xd = p.xd.as<float>();
    a.in = s.in;
    a.out = s.out;
    a.n_rows = n_rows;
    cuda::matvec_q8_0_device(a, v);  // warm-up: module load, first-touch
    cuda::synchronize("warm-up");
    cuda::EventTimer timer;
    for (auto _ : state) {
      flush.fill_async(0);
      timer.start();
      cuda::matvec_q8_0_device(a, v);
      state.SetIterationTime(static_cast<double>(timer.stop_ms()) * 1e-3);
    }
    const double w_bytes = static_cast<double>(cuda::q8_0_matrix_bytes(s.in, s.out));
    state.SetBytesProcessed(
        static_cast<int64_t>(w_bytes * static_cast<double>(state.iterations())));
    state.SetItemsProcessed(state.iterations() * n_rows);
    state.counters["weight_passes"] =
        static_cast<double>(v == CudaMatvecVariant::decode_warp8 ? n_rows : (n_rows + 7) / 8);
    state.SetLabel(info.name);
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
}

}  // namespace
}  // namespace ds4

int main(int argc, char** argv) {
  using ds4::CudaMatvecVariant;
  for (const ds4::BenchShape& s : ds4::kShapes) {
    for (CudaMatvecVariant v : {CudaMatvecVariant::decode_warp8, CudaMatvecVariant::batch_warp8}) {
      const std::string name = std::string(ds4::cuda_matvec_variant_name(v)) + "/" + s.name + "_" +
                               std::to_string(s.in) + "x" + std::to_string(s.out);
      benchmark::RegisterBenchmark(name.c_str(), ds4::bm_matvec, s, v)
          ->ArgName("N")
          ->Arg(1)
          ->Arg(2)
          ->Arg(4)
          ->Arg(8)
          ->Arg(16)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
