// CUDA backend internals shared by the .cu files, the tests and the benchmarks: error checks,
// a device buffer and an event timer. No CUDA types, so host-only code (tests/bench) can use it;
// with -DDS4_CUDA=OFF the same API comes from engine/backend/cuda_stub/cuda_stub.cpp and throws.
//
// Everything runs on the current device and the default (legacy) stream; the forward pass will
// bring streams and a context object. All errors are ds4::Error with a one-line message that
// names the CUDA call and cudaGetErrorString.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ds4::cuda {

// Throws ds4::Error("<call>: <cudaGetErrorString(status)> (<cudaGetErrorName>)") unless status is
// cudaSuccess (0). `status` is a cudaError_t passed as int.
void check(int status, const char* call);

// Throws ds4::Error("<what>: CUDA unavailable: <why>") unless cuda_device_info().available.
void require_device(const char* what);

// Waits for the device (cudaDeviceSynchronize) and throws on any pending error.
void synchronize(const char* what);

// Owning device allocation (cudaMalloc, 256-byte aligned). Move-only; the destructor frees and
// never throws.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // bytes == 0 gives an empty buffer
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

  // Synchronous copies of `bytes` at byte `offset`; throw if the range is outside the buffer.
  void upload(const void* src, size_t bytes, size_t offset = 0);
  void download(void* dst, size_t bytes, size_t offset = 0) const;
  // cudaMemsetAsync of the whole buffer on the default stream (used to flush L2 in benchmarks).
  void fill_async(int byte_value);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// GPU time between start() and stop_ms() on the default stream (two cudaEvents).
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  // Records the stop event, waits for it and returns the elapsed milliseconds.
  float stop_ms();

 private:
  void* start_ = nullptr;  // cudaEvent_t
  void* stop_ = nullptr;   // cudaEvent_t
};

}  // namespace ds4::cuda
