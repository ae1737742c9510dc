// The timing protocol shared by the CUDA benchmarks (cuda_matmul_bench, cuda_ops_bench): one
// warm-up call, then per iteration L2 flushed by a memset of one buffer plus a read pass over
// another (the memset alone leaves dirty lines whose write-back would land in the timed kernel),
// and the call timed with CUDA events as Google Benchmark manual time.
#pragma once
#include <benchmark/benchmark.h>

#include "backend/cuda/device.h"
#include "backend/cuda/l2_flush.h"

namespace ds4::cuda_bench {

// `buffers` has members flush (filled with fill_async), flush_read and sink (for
// cuda::l2_read_pass). Returns the mean seconds of one call of `body`.
template <class FlushBuffers, class Body>
double timed_flushed_loop(benchmark::State& state, FlushBuffers& buffers, Body&& body) {
  body();  // warm-up: module load, scratch allocation, first touch
  cuda::synchronize("warm-up");
  cuda::EventTimer timer;
  double total_s = 0.0;
  for (auto _ : state) {
    buffers.flush.fill_async(0);
    cuda::l2_read_pass(buffers.flush_read.get(), buffers.flush_read.size(), buffers.sink.get());
    timer.start();
    body();
    const double s = static_cast<double>(timer.stop_ms()) * 1e-3;
    total_s += s;
    state.SetIterationTime(s);
  }
  cuda::synchronize("timed loop");
  return total_s / static_cast<double>(state.iterations());
}

}  // namespace ds4::cuda_bench
