// CUDA matmul family at the DeepSeek V4 Flash shapes of ds4-dispatch.md §8, N = 1 .. 128, the
// three paths side by side in one run (the same table as §8, which measured ds4 on an H100):
//   a: N sequential N=1 decodes     (matvec_q8_0__decode_planes launched N times)
//   b: the exact batched kernel     (matvec_q8_0__batch_planes: bit-equal to a, row by row)
//   b2: the exact tensor-core kernel (matvec_q8_0__batch_imma: bit-equal to a, row by row)
//   c: the fast path ds4 takes      (matmul_q8__gemm_f16 = cuBLAS on an F16 copy; for the vocab
//                                    head matmul_q8__preq_tree, as ds4 outside its allow-list)
// plus, at N = 1, the earlier decode kernel as a baseline (base: matvec_q8_0__decode_warp8 on
// the GGUF layout), the F16 router / HC mixer (a/b/c = ordered / ordered_batch / GemmEx), and
// the dense part of one layer (layer_dense: q_a, q_b, kv, out A (8 groups), out B, shared
// gate, up, down; ds4's per-layer §8 figures also contain the routed MoE, which is not here).
//
//   ./build/tests/cuda_matmul_bench --benchmark_format=json --benchmark_out=out.json
//   ./build/tests/cuda_matmul_bench --benchmark_filter='q_b_.*/N:16'
//
// Timing: CUDA events around one call (activation quantisation or conversion included), manual
// time. Before every iteration L2 (H100: 50 MB) is flushed by a 128 MiB memset followed by a
// 128 MiB read pass over a second buffer: the memset alone leaves L2 full of dirty lines whose
// write-back then lands inside the timed kernel (run 1 on the H100: +8 us on a 2 MB matrix).
// floor/noop times an empty kernel under the same protocol (launch + event overhead).
// Fixed iterations: 100 (N <= 16), 10 (N = 128). Counters:
//   bytes_per_second  weight bytes (the stored Q8_0/F16 matrix, counted once per call) / time
//   hbm_frac          bytes_per_second / 3.35e12 (H100 SXM HBM3 peak): the roofline fraction
//   roofline_us       the stored matrix bytes / 3.35e12 in microseconds
//   items_per_second  activation rows / time
// Without a usable device every benchmark is skipped with the reason.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_timing.h"
#include "backend/cuda/device.h"
#include "backend/cuda/l2_flush.h"
#include "backend/cuda/matvec_q8_0.h"
#include "ds4/cuda_backend.h"
#include "ds4/cuda_matmul.h"
#include "ds4/error.h"
#include "ds4/quant.h"

namespace ds4 {
namespace {

constexpr double kHbmBytesPerSecond = 3.35e12;  // H100 SXM5 80 GB datasheet
constexpr size_t kL2FlushBytes = size_t{128} << 20;
constexpr int64_t kNs[] = {1, 2, 4, 8, 16, 128};
constexpr int64_t kMaxN = 128;

struct BenchShape {
  const char* name;
  CudaWeightType type;
  int64_t in, out, groups;
};

constexpr BenchShape kShapes[] = {
    {"q_a", CudaWeightType::q8_0, 4096, 1024, 1},
    {"q_b", CudaWeightType::q8_0, 1024, 32768, 1},
    {"kv", CudaWeightType::q8_0, 4096, 512, 1},
    {"out_a", CudaWeightType::q8_0, 4096, 1024, 8},
    {"out_b", CudaWeightType::q8_0, 8192, 4096, 1},
    {"shexp_gate_up", CudaWeightType::q8_0, 4096, 2048, 1},
    {"shexp_down", CudaWeightType::q8_0, 2048, 4096, 1},
    {"head", CudaWeightType::q8_0, 4096, 129280, 1},
    {"router", CudaWeightType::f16, 4096, 256, 1},
    {"hc_mixer", CudaWeightType::f16, 16384, 24, 1},
};

// The dense matmuls of one layer, in forward order (gate and up are separate matrices).
constexpr BenchShape kLayer[] = {
    {"q_a", CudaWeightType::q8_0, 4096, 1024, 1},
    {"q_b", CudaWeightType::q8_0, 1024, 32768, 1},
    {"kv", CudaWeightType::q8_0, 4096, 512, 1},
    {"out_a", CudaWeightType::q8_0, 4096, 1024, 8},
    {"out_b", CudaWeightType::q8_0, 8192, 4096, 1},
    {"shexp_gate", CudaWeightType::q8_0, 4096, 2048, 1},
    {"shexp_up", CudaWeightType::q8_0, 4096, 2048, 1},
    {"shexp_down", CudaWeightType::q8_0, 2048, 4096, 1},
};

enum class Path { a_decodes, b_exact_batched, c_fast, base_warp8, b2_exact_imma };

CudaMatmulVariant variant_for(const BenchShape& s, Path p) {
  const bool head = std::string(s.name) == "head";
  if (s.type == CudaWeightType::f16) {
    return p == Path::a_decodes         ? CudaMatmulVariant::f16_decode
           : p == Path::b_exact_batched ? CudaMatmulVariant::f16_batch
                                        : CudaMatmulVariant::f16_gemm;
  }
  return p == Path::a_decodes         ? CudaMatmulVariant::q8_decode
         : p == Path::b_exact_batched ? CudaMatmulVariant::q8_batch
         : p == Path::b2_exact_imma   ? CudaMatmulVariant::q8_batch_imma
         : head                       ? CudaMatmulVariant::q8_preq_tree
                                      : CudaMatmulVariant::q8_gemm_f16;
}

const char* path_tag(Path p) {
  switch (p) {
    case Path::a_decodes:
      return "a";
    case Path::b_exact_batched:
      return "b";
    case Path::c_fast:
      return "c";
    case Path::base_warp8:
      return "base";
    case Path::b2_exact_imma:
      return "b2";
  }
  return "?";
}

std::string shape_label(const BenchShape& s) {
  std::string l = std::string(s.name) + "_" + std::to_string(s.in) + "x" + std::to_string(s.out);
  if (s.groups > 1) l += "x" + std::to_string(s.groups);
  return l;
}

uint64_t splitmix64(uint64_t& st) {
  uint64_t z = (st += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random weights in GGUF layout: Q8_0 blocks with f16 scales in [2^-10, 2^-6) and random int8
// quants; F16 uniform in [-1/16, 1/16).
std::vector<uint8_t> random_weights(const BenchShape& s, uint64_t seed) {
  const size_t rows = static_cast<size_t>(s.out * s.groups);
  uint64_t st = seed;
  if (s.type == CudaWeightType::q8_0) {
    const size_t blocks = rows * static_cast<size_t>(s.in / 32);
    std::vector<uint8_t> w(blocks * 34);
    for (size_t b = 0; b < blocks; ++b) {
      uint8_t* blk = w.data() + b * 34;
      uint64_t z = splitmix64(st);
      const uint16_t d = f32_to_f16(std::ldexp(1.0f + static_cast<float>(z & 0xff) / 256.0f,
                                               -10 + static_cast<int>((z >> 8) % 4)));
      blk[0] = static_cast<uint8_t>(d & 0xff);
      blk[1] = static_cast<uint8_t>(d >> 8);
      for (int i = 0; i < 32; i += 8) {
        z = splitmix64(st);
        std::memcpy(blk + 2 + i, &z, 8);
      }
    }
    return w;
  }
  std::vector<uint8_t> w(rows * static_cast<size_t>(s.in) * 2);
  for (size_t i = 0; i < w.size() / 2; ++i) {
    const uint64_t z = splitmix64(st);
    const uint16_t h = f32_to_f16((static_cast<float>(z & 0xffff) / 65536.0f - 0.5f) / 8.0f);
    std::memcpy(w.data() + 2 * i, &h, 2);
  }
  return w;
}

// Device state of the whole program: built once, kept for all benchmarks.
struct Problem {
  std::unique_ptr<CudaMatrix> m;
  cuda::DeviceBuffer gguf;  // GGUF-layout copy for the base path (groups == 1 only)
};

struct Bench {
  CudaMatmulContext ctx;
  cuda::DeviceBuffer flush{kL2FlushBytes};
  cuda::DeviceBuffer flush_read{kL2FlushBytes};
  cuda::DeviceBuffer sink{256};
  cuda::DeviceBuffer x, y, xq, xd;  // (kMaxN, max cols) activations and scratch
  std::map<std::string, std::unique_ptr<Problem>> problems;

  Bench() {
    int64_t max_in = 0, max_out = 0;
    for (const BenchShape& s : kShapes) {
      max_in = std::max(max_in, s.in * s.groups);
      max_out = std::max(max_out, s.out * s.groups);
    }
    std::vector<float> hx(static_cast<size_t>(kMaxN * max_in));
    std::mt19937 rng(42);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (auto& v : hx) v = n(rng);
    flush_read.fill_async(0);
    x = cuda::DeviceBuffer(hx.size() * sizeof(float));
    x.upload(hx.data(), x.size());
    y = cuda::DeviceBuffer(static_cast<size_t>(kMaxN * max_out) * sizeof(float));
    xq = cuda::DeviceBuffer(static_cast<size_t>(kMaxN * max_in));
    xd = cuda::DeviceBuffer(static_cast<size_t>(kMaxN * max_in / 32) * sizeof(float));
  }

  Problem& problem(const BenchShape& s) {
    auto& slot = problems[s.name];
    if (!slot) {
      slot = std::make_unique<Problem>();
      const std::vector<uint8_t> w = random_weights(s, std::hash<std::string>{}(s.name));
      slot->m = std::make_unique<CudaMatrix>(s.type, s.in, s.out, s.groups, w.data(), true);
      if (s.type == CudaWeightType::q8_0 && s.groups == 1) {
        slot->gguf = cuda::DeviceBuffer(w.size());
        slot->gguf.upload(w.data(), w.size());
      }
    }
    return *slot;
  }

  void run(const BenchShape& s, Path p, int64_t n) {
    Problem& pr = problem(s);
    if (p == Path::base_warp8) {
      cuda::MatvecQ8_0Args a;
      a.w = pr.gguf.get();
      a.x = x.as<float>();
      a.y = y.as<float>();
      a.xq = xq.as<int8_t>();
      a.xd = xd.as<float>();
      a.in = s.in;
      a.out = s.out;
      a.n_rows = n;
      cuda::matvec_q8_0_device(a, CudaMatvecVariant::decode_warp8);
      return;
    }
    cuda_matmul(ctx, *pr.m, x.as<float>(), n, y.as<float>(), variant_for(s, p));
  }
};

Bench& bench() {
  static Bench b;
  return b;
}

int64_t iterations_for(int64_t n) { return n >= 128 ? 10 : 100; }

// Times `body` (one call of the measured work) with an L2 flush before each iteration.
template <class Body>
void timed_loop(benchmark::State& state, double weight_bytes, int64_t n, Body body) {
  const double mean_s = cuda_bench::timed_flushed_loop(state, bench(), body);
  const double iters = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(weight_bytes * iters));
  state.SetItemsProcessed(static_cast<int64_t>(n * state.iterations()));
  state.counters["hbm_frac"] = weight_bytes / mean_s / kHbmBytesPerSecond;
  state.counters["roofline_us"] = weight_bytes / kHbmBytesPerSecond * 1e6;
}

bool skip_without_device(benchmark::State& state) {
  const CudaDeviceInfo info = cuda_device_info();
  if (info.available) {
    state.SetLabel(info.name);
    return false;
  }
  state.SkipWithError(("no usable CUDA device: " + info.why_unavailable).c_str());
  return true;
}

void bm_shape(benchmark::State& state, BenchShape s, Path p) {
  if (skip_without_device(state)) return;
  const int64_t n = state.range(0);
  try {
    Bench& b = bench();
    const double bytes = static_cast<double>(b.problem(s).m->stored_bytes());
    timed_loop(state, bytes, n, [&] { b.run(s, p, n); });
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
}

void bm_layer(benchmark::State& state, Path p) {
  if (skip_without_device(state)) return;
  const int64_t n = state.range(0);
  try {
    Bench& b = bench();
    double bytes = 0.0;
    for (const BenchShape& s : kLayer) bytes += static_cast<double>(b.problem(s).m->stored_bytes());
    timed_loop(state, bytes, n, [&] {
      for (const BenchShape& s : kLayer) b.run(s, p, n);
    });
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
}

void bm_noop(benchmark::State& state) {
  if (skip_without_device(state)) return;
  try {
    timed_loop(state, 0.0, 1, [] { cuda::launch_noop(); });
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
}

void register_all() {
  benchmark::RegisterBenchmark("floor/noop", bm_noop)
      ->Iterations(100)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  for (const BenchShape& s : kShapes) {
    std::vector<Path> paths = {Path::a_decodes, Path::b_exact_batched, Path::c_fast};
    if (s.type == CudaWeightType::q8_0) paths.push_back(Path::b2_exact_imma);
    for (Path p : paths) {
      const std::string name =
          shape_label(s) + "/" + path_tag(p) + ":" + cuda_matmul_variant_name(variant_for(s, p));
      for (int64_t n : kNs) {
        benchmark::RegisterBenchmark(name.c_str(), bm_shape, s, p)
            ->ArgName("N")
            ->Arg(n)
            ->Iterations(iterations_for(n))
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
    if (s.type == CudaWeightType::q8_0 && s.groups == 1) {
      const std::string name =
          shape_label(s) + "/base:" + cuda_matvec_variant_name(CudaMatvecVariant::decode_warp8);
      benchmark::RegisterBenchmark(name.c_str(), bm_shape, s, Path::base_warp8)
          ->ArgName("N")
          ->Arg(1)
          ->Iterations(iterations_for(1))
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (Path p : {Path::a_decodes, Path::b_exact_batched, Path::c_fast, Path::b2_exact_imma}) {
    const std::string name = std::string("layer_dense/") + path_tag(p);
    for (int64_t n : kNs) {
      benchmark::RegisterBenchmark(name.c_str(), bm_layer, p)
          ->ArgName("N")
          ->Arg(n)
          ->Iterations(iterations_for(n))
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

}  // namespace
}  // namespace ds4

int main(int argc, char** argv) {
  ds4::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
