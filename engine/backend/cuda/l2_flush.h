// Benchmark support for the CUDA backend: a clean L2 flush and an empty kernel (the timing
// floor). No CUDA types; the -DDS4_CUDA=OFF twins (throwing) are in
// engine/backend/cuda_stub/cuda_matmul_stub.cpp.
#pragma once
#include <cstddef>

namespace ds4::cuda {

// Reads `bytes` (a multiple of 16) of the device buffer `buf` (16-byte aligned) with 16-byte
// loads on the default stream and writes one word to `sink` (device, 4 bytes) only if the
// data holds an impossible pattern. Run after a memset flush, it evicts the memset's dirty
// lines (their write-back then happens here, not inside the next timed kernel) and leaves L2
// holding clean lines of `buf`.
void l2_read_pass(const void* buf, size_t bytes, void* sink);

// Launches an empty 1-block kernel on the default stream (launch + event overhead floor).
void launch_noop();

}  // namespace ds4::cuda
