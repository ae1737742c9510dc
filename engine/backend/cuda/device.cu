// CUDA device basics: device info for manifests and test skips, the error check every CUDA call
// goes through, a device buffer and an event timer (declared in backend/cuda/device.h and
// ds4/cuda_backend.h; the -DDS4_CUDA=OFF twin is engine/backend/cuda_stub/cuda_stub.cpp).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "backend/cuda/device.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

// A kernel that does nothing: cudaFuncGetAttributes on it tells whether this binary carries code
// the device can run (CMAKE_CUDA_ARCHITECTURES 90a gives sm_90a code only, which runs on compute
// capability 9.0 and nowhere else), so an unusable device is reported as unavailable instead of
// failing at the first launch with "no kernel image is available".
__global__ void probe_kernel() {}

std::string error_text(cudaError_t e) {
  return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
}

}  // namespace

CudaDeviceInfo cuda_device_info() noexcept {
  CudaDeviceInfo info;
  try {
    int runtime = 0;
    if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) info.cuda_runtime_version = runtime;
    int major = 0, minor = 0, patch = 0;
    if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
        cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
        cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS) {
      info.cublas_version = major * 10000 + minor * 100 + patch;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error so later queries start clean
      info.why_unavailable = "cudaGetDeviceCount: " + error_text(e);
      return info;
    }
    if (count == 0) {
      info.why_unavailable = "cudaGetDeviceCount: 0 devices";
      return info;
    }
    int dev = 0;
    e = cudaGetDevice(&dev);
    cudaDeviceProp prop{};
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, dev);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      info.why_unavailable = "cudaGetDeviceProperties: " + error_text(e);
      return info;
    }
    info.name = prop.name;
    info.sm_count = prop.multiProcessorCount;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.total_mem = prop.totalGlobalMem;
    cudaFuncAttributes attr{};
    e = cudaFuncGetAttributes(&attr, probe_kernel);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      const std::string sm = std::to_string(prop.major) + std::to_string(prop.minor);
      info.why_unavailable = "device " + info.name + " (sm_" + sm +
                             ") has no usable kernel image in this build (CMAKE_CUDA_ARCHITECTURES: " +
                             DS4_CUDA_ARCH_LIST + "; rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + sm +
                             "): cudaFuncGetAttributes: " + error_text(e);
      return info;
    }
    info.available = true;
  } catch (...) {  // std::bad_alloc from a string: report, never throw
    info.available = false;
    info.why_unavailable = "cuda_device_info: out of memory";
  }
  return info;
}

namespace cuda {

void check(int status, const char* call) {
  if (status == 0) return;
  fail(std::string(call) + ": " + error_text(static_cast<cudaError_t>(status)));
}

void require_device(const char* what) {
  // Queried once per process: the device set does not change while we run.
  static const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) fail(std::string(what) + ": CUDA unavailable: " + info.why_unavailable);
}

void synchronize(const char* what) {
  check(cudaDeviceSynchronize(), (std::string(what) + ": cudaDeviceSynchronize").c_str());
}

// ============================================================================================
// DeviceBuffer
// ============================================================================================

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes == 0) return;
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
  ptr_ = p;
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) (void)cudaFree(ptr_);  // errors here would be sticky ones already reported
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) (void)cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

namespace {

void check_range(size_t offset, size_t bytes, size_t size, const char* what) {
  if (offset > size || bytes > size - offset) {
    fail(std::string(what) + ": range [" + std::to_string(offset) + ", +" + std::to_string(bytes) +
         ") outside a device buffer of " + std::to_string(size) + " bytes");
  }
}

}  // namespace

void DeviceBuffer::upload(const void* src, size_t bytes, size_t offset) {
  check_range(offset, bytes, bytes_, "DeviceBuffer::upload");
  if (bytes == 0) return;
  check(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice),
        "cudaMemcpy(host to device)");
}

void DeviceBuffer::download(void* dst, size_t bytes, size_t offset) const {
  check_range(offset, bytes, bytes_, "DeviceBuffer::download");
  if (bytes == 0) return;
  check(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy(device to host)");
}

void DeviceBuffer::fill_async(int byte_value) {
  if (bytes_ == 0) return;
  check(cudaMemsetAsync(ptr_, byte_value, bytes_, 0), "cudaMemsetAsync");
}

// ============================================================================================
// EventTimer
// ============================================================================================

EventTimer::EventTimer() {
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  const cudaError_t e = cudaEventCreate(&b);
  if (e != cudaSuccess) {
    (void)cudaEventDestroy(a);
    check(e, "cudaEventCreate");
  }
  start_ = a;
  stop_ = b;
}

EventTimer::~EventTimer() {
  if (start_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

void EventTimer::start() {
  check(cudaEventRecord(static_cast<cudaEvent_t>(start_), 0), "cudaEventRecord(start)");
}

float EventTimer::stop_ms() {
  auto stop = static_cast<cudaEvent_t>(stop_);
  check(cudaEventRecord(stop, 0), "cudaEventRecord(stop)");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), stop), "cudaEventElapsedTime");
  return ms;
}

}  // namespace cuda
}  // namespace ds4
