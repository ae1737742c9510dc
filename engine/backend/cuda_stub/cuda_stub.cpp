// The CUDA backend API (ds4/cuda_backend.h, backend/cuda/device.h, backend/cuda/matvec_q8_0.h)
// in a build without CUDA (-DDS4_CUDA=OFF): the device is reported unavailable with the reason
// and every operation throws ds4::Error. With -DDS4_CUDA=ON the real definitions come from
// engine/backend/cuda/*.cu and this file compiles to nothing. DS4_HAVE_CUDA is always defined
// (0 or 1) by engine/CMakeLists.txt; this is the one #if of the backend.
#if !DS4_HAVE_CUDA

#include <string>
#include <utility>

#include "backend/cuda/device.h"
#include "backend/cuda/matvec_q8_0.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

constexpr const char* kNotBuilt = "CUDA backend not built (configure with -DDS4_CUDA=ON)";

[[noreturn]] void not_built(const char* what) { fail(std::string(what) + ": " + kNotBuilt); }

}  // namespace

CudaDeviceInfo cuda_device_info() noexcept {
  CudaDeviceInfo info;
  info.available = false;
  info.why_unavailable = kNotBuilt;
  return info;
}

void cuda_matvec_q8_0(const void*, int64_t, int64_t, const float*, int64_t, float*,
                      CudaMatvecVariant) {
  not_built("cuda_matvec_q8_0");
}

namespace cuda {

void check(int status, const char* call) {
  if (status != 0) not_built(call);
}
void require_device(const char* what) { not_built(what); }
void synchronize(const char* what) { not_built(what); }

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes != 0) not_built("DeviceBuffer");
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  ptr_ = std::exchange(other.ptr_, nullptr);
  bytes_ = std::exchange(other.bytes_, 0);
  return *this;
}
void DeviceBuffer::upload(const void*, size_t, size_t) { not_built("DeviceBuffer::upload"); }
void DeviceBuffer::download(void*, size_t, size_t) const { not_built("DeviceBuffer::download"); }
void DeviceBuffer::fill_async(int) { not_built("DeviceBuffer::fill_async"); }

EventTimer::EventTimer() { not_built("EventTimer"); }
EventTimer::~EventTimer() = default;
void EventTimer::start() { not_built("EventTimer::start"); }
float EventTimer::stop_ms() { not_built("EventTimer::stop_ms"); }

void quantize_act_q8_0_device(const float*, int64_t, int64_t, int8_t*, float*) {
  not_built("quantize_act_q8_0_device");
}

void matvec_q8_0_device(const MatvecQ8_0Args&, CudaMatvecVariant v) {
  not_built(cuda_matvec_variant_name(v));
}

}  // namespace cuda
}  // namespace ds4

#endif  // !DS4_HAVE_CUDA
