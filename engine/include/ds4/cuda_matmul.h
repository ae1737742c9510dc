// CUDA matmul family: y = x · Wᵀ for Q8_0, F16 and F32 weights, exact and fast variants, behind a
// backend-neutral API (no CUDA types, no #ifdef).
//
// With -DDS4_CUDA=ON the definitions come from engine/backend/cuda/matmul_*.cu; with
// -DDS4_CUDA=OFF from engine/backend/cuda_stub/cuda_matmul_stub.cpp, where every constructor and
// call throws ds4::Error ("CUDA backend not built"). Callers test cuda_device_info().available.
//
// Variants (style.md rule 3; the kernels' header comments in engine/backend/cuda/ give the
// strategy and numerics of each):
//   exact (bit-equal to N=1 decode for every row, by construction; deterministic):
//     matvec_q8_0__decode_planes   Q8_0 N=1 decode kernel, launched once per activation row
//     matvec_q8_0__batch_planes    Q8_0, one launch, weights read once per tile of <= 16 rows
//     matvec_q8_0__batch_imma      Q8_0, one launch, exact int8 tensor-core block dots (mma.sync),
//                                  weights read once per tile of <= 32 rows
//     matvec_f16__ordered          F16 N=1 ordered-chunks kernel, launched once per row
//     matvec_f16__ordered_batch    F16, one launch, weights read once per tile of <= 16 rows
//     matvec_f32__ordered          F32 N=1 ordered-chunks kernel, launched once per row
//     matvec_f32__ordered_batch    F32, one launch, weights read once per tile of <= 16 rows
//   fast (what ds4 runs at N > 1; not bit-equal to decode):
//     matmul_q8__gemm_f16          cuBLAS GemmEx on an F16 copy of the Q8_0 weights (d*q rounded
//                                  to F16) with F16-rounded activations, F32 accumulation
//     matmul_q8__preq_tree         Q8_0 with int8 activations, 256 threads per output, tree sum
//                                  (ds4's path for matrices outside its F16 allow-list: the head)
//     matmul_f16__gemm_f16act      cuBLAS GemmEx, F16 weights, F16-rounded activations
//     matmul_f32__gemm             cuBLAS GEMM in F32 (no TF32)
//     matmul_f32__gemm_tf32        cuBLAS GEMM with TF32 tensor cores (ds4's default math)
// The fast names equal the CPU fast variants' names in engine/gates.def where the arithmetic is
// of the same kind (engine/ops/matmul/linear.cpp); TF32 has no CPU twin.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace ds4 {

// Weight storage type of a CudaMatrix (GGUF layouts: Q8_0 rows of in/32 blocks of 34 bytes,
// F16 and F32 rows of `in` elements).
enum class CudaWeightType : uint8_t { q8_0, f16, f32 };

enum class CudaMatmulVariant : uint8_t {
  q8_decode,      // matvec_q8_0__decode_planes
  q8_batch,       // matvec_q8_0__batch_planes
  q8_gemm_f16,    // matmul_q8__gemm_f16
  q8_preq_tree,   // matmul_q8__preq_tree
  f16_decode,     // matvec_f16__ordered
  f16_batch,      // matvec_f16__ordered_batch
  f16_gemm,       // matmul_f16__gemm_f16act
  f32_decode,     // matvec_f32__ordered
  f32_batch,      // matvec_f32__ordered_batch
  f32_gemm,       // matmul_f32__gemm
  f32_gemm_tf32,  // matmul_f32__gemm_tf32
  q8_batch_imma,  // matvec_q8_0__batch_imma
};

struct CudaMatmulVariantInfo {
  CudaMatmulVariant id;
  const char* name;          // stable variant name; never reused (style.md rule 3)
  CudaWeightType type;       // the weight type it runs on
  bool exact;                // per row bit-equal to the N=1 decode kernel of its type
  bool launch_per_row;       // the N=1 decode kernel itself: one launch per activation row
  CudaMatmulVariant decode;  // the N=1 decode variant of the same weight type
  const char* gate;          // engine/gates.def gate whose fast or exact side it is
};

// One row per variant, in enum order (tests and benchmarks iterate over it).
inline constexpr CudaMatmulVariantInfo kCudaMatmulVariants[] = {
    {CudaMatmulVariant::q8_decode, "matvec_q8_0__decode_planes", CudaWeightType::q8_0, true, true,
     CudaMatmulVariant::q8_decode, "q8_gemm"},
    {CudaMatmulVariant::q8_batch, "matvec_q8_0__batch_planes", CudaWeightType::q8_0, true, false,
     CudaMatmulVariant::q8_decode, "q8_gemm"},
    {CudaMatmulVariant::q8_gemm_f16, "matmul_q8__gemm_f16", CudaWeightType::q8_0, false, false,
     CudaMatmulVariant::q8_decode, "q8_gemm"},
    {CudaMatmulVariant::q8_preq_tree, "matmul_q8__preq_tree", CudaWeightType::q8_0, false, false,
     CudaMatmulVariant::q8_decode, "output_head_preq"},
    {CudaMatmulVariant::f16_decode, "matvec_f16__ordered", CudaWeightType::f16, true, true,
     CudaMatmulVariant::f16_decode, "f16_gemm"},
    {CudaMatmulVariant::f16_batch, "matvec_f16__ordered_batch", CudaWeightType::f16, true, false,
     CudaMatmulVariant::f16_decode, "f16_gemm"},
    {CudaMatmulVariant::f16_gemm, "matmul_f16__gemm_f16act", CudaWeightType::f16, false, false,
     CudaMatmulVariant::f16_decode, "f16_gemm"},
    {CudaMatmulVariant::f32_decode, "matvec_f32__ordered", CudaWeightType::f32, true, true,
     CudaMatmulVariant::f32_decode, "f32_gemm"},
    {CudaMatmulVariant::f32_batch, "matvec_f32__ordered_batch", CudaWeightType::f32, true, false,
     CudaMatmulVariant::f32_decode, "f32_gemm"},
    {CudaMatmulVariant::f32_gemm, "matmul_f32__gemm", CudaWeightType::f32, false, false,
     CudaMatmulVariant::f32_decode, "f32_gemm"},
    {CudaMatmulVariant::f32_gemm_tf32, "matmul_f32__gemm_tf32", CudaWeightType::f32, false, false,
     CudaMatmulVariant::f32_decode, "f32_gemm"},
    {CudaMatmulVariant::q8_batch_imma, "matvec_q8_0__batch_imma", CudaWeightType::q8_0, true, false,
     CudaMatmulVariant::q8_decode, "q8_gemm"},
};
inline constexpr size_t kCudaMatmulVariantCount =
    sizeof(kCudaMatmulVariants) / sizeof(kCudaMatmulVariants[0]);
static_assert(kCudaMatmulVariantCount == static_cast<size_t>(CudaMatmulVariant::q8_batch_imma) + 1,
              "kCudaMatmulVariants needs one row per CudaMatmulVariant");

inline const CudaMatmulVariantInfo& cuda_matmul_variant_info(CudaMatmulVariant v) {
  return kCudaMatmulVariants[static_cast<size_t>(v)];
}
inline const char* cuda_matmul_variant_name(CudaMatmulVariant v) {
  return cuda_matmul_variant_info(v).name;
}
// Name -> variant; false when the name is unknown.
inline bool cuda_matmul_variant_from_name(std::string_view name, CudaMatmulVariant* out) {
  for (const CudaMatmulVariantInfo& i : kCudaMatmulVariants) {
    if (name == i.name) {
      *out = i.id;
      return true;
    }
  }
  return false;
}
inline const char* cuda_weight_type_name(CudaWeightType t) {
  return t == CudaWeightType::q8_0 ? "q8_0" : t == CudaWeightType::f16 ? "f16" : "f32";
}

// Per-process GPU state of the matmul family: one cuBLAS handle, activation scratch (grown on
// demand), the device's SM count and occupancy table. Not thread-safe: one context per thread
// (or per stream, when streams come). Work runs on the default stream.
class CudaMatmulContext {
 public:
  CudaMatmulContext();  // throws ds4::Error when CUDA is unavailable or cuBLAS fails to start
  ~CudaMatmulContext();
  CudaMatmulContext(CudaMatmulContext&&) noexcept;
  CudaMatmulContext& operator=(CudaMatmulContext&&) noexcept;
  CudaMatmulContext(const CudaMatmulContext&) = delete;
  CudaMatmulContext& operator=(const CudaMatmulContext&) = delete;

  struct Impl;  // defined by the backend
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// A weight matrix on the device, in the layout its kernels read. `groups` stacked matrices of
// (out, in) each (groups > 1: the grouped output LoRA A, 8 x (4096 -> 1024)); group g maps
// activation columns [g*in, (g+1)*in) to output columns [g*out, (g+1)*out).
//   Q8_0: stored as two planes, quants (groups*out, in) int8 in natural order and scales
//         (groups*out, in/32) f16, so a lane reads its 32 quants with two 16-byte loads (the
//         GGUF 34-byte block is only 2-byte aligned). Same bits as GGUF; `gemm_copy` adds the
//         F16 expansion (d*q rounded to F16) that matmul_q8__gemm_f16 reads.
//   F16, F32: row-major as in GGUF.
class CudaMatrix {
 public:
  // host: groups*out rows in GGUF layout (row bytes: Q8_0 in/32*34, F16 in*2, F32 in*4).
  // Q8_0 needs in % 32 == 0. Throws ds4::Error on bad shapes, no device, or CUDA errors.
  CudaMatrix(CudaWeightType type, int64_t in, int64_t out, int64_t groups, const void* host,
             bool gemm_copy = true);
  ~CudaMatrix();
  CudaMatrix(CudaMatrix&&) noexcept;
  CudaMatrix& operator=(CudaMatrix&&) noexcept;
  CudaMatrix(const CudaMatrix&) = delete;
  CudaMatrix& operator=(const CudaMatrix&) = delete;

  CudaWeightType type() const;
  int64_t in() const;   // per group
  int64_t out() const;  // per group
  int64_t groups() const;
  // Bytes of the whole matrix in its storage type (Q8_0: 34 bytes per 32 weights), i.e. what
  // one pass of an exact kernel reads.
  size_t stored_bytes() const;
  // Bytes one pass of the cuBLAS variant reads (Q8_0: the F16 copy; 0 when gemm_copy was false).
  size_t gemm_bytes() const;

  struct Impl;  // defined by the backend
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// y = x · Wᵀ per group, on device memory, asynchronously on the default stream.
//   x: (n_rows, groups*in) F32, 16-byte aligned
//   y: (n_rows, groups*out) F32, 4-byte aligned; y[r][g*out + o] = Σ_i W_g[o][i] x[r][g*in + i]
// `v` must run on w.type() (cuda_matmul_variant_info(v).type). Exact variants (decode and
// batch) give, for every row, the bits the N=1 decode kernel gives for that row alone. n_rows 0
// does nothing. Throws ds4::Error on bad arguments or a failed launch (naming the variant).
void cuda_matmul(CudaMatmulContext& ctx, const CudaMatrix& w, const float* x, int64_t n_rows,
                 float* y, CudaMatmulVariant v);

}  // namespace ds4
