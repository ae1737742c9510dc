// The ds4 profile's storage numerics (ds4-model.md §4.4 step 5, §4.5, §13.5).
#pragma once
#include <cstdint>

namespace ds4 {

// kv_fp8__ref: FP8 E4M3 round trip of x[0..n_nope) in blocks of 64: amax = max(|x|, 1e-4),
// s = 2^ceil(log2(amax/448)), x = e4m3(clamp(x/s, +-448)) * s. The rotated tail is untouched.
void kv_fp8_roundtrip_ref(float* x, int n_nope);
// hadamard__ref: in-place Walsh-Hadamard transform of n (power of two) values in natural
// (Sylvester) order, butterflies (a, b) -> (a + b, a - b) with stride 1, 2, ..., n/2, then * 1/sqrt(n).
void hadamard_ref(float* x, int n);
// fp4_qat__ref: FP4 E2M1 round trip in blocks of 32: s = 2^ceil(log2(max(amax, 7.05e-38)/6)),
// x = e2m1(x/s) * s.
void fp4_roundtrip_ref(float* x, int n);
// Rounds every element to F16 and back.
void round_f16_inplace(float* x, int64_t n);

}  // namespace ds4
