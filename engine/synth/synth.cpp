// Synthetic DS4 model generator (see ds4/synth.h).
//
// Weight distributions follow the HF oracle script (hf_tiny_dsv4.py) so a synthetic model is as
// "loud" as the oracle's: unit-scale activations, ~4% of expert gate/up values beyond the SwiGLU
// clamp, norm weights near 1. Every tensor row has its own random stream seeded from
// (seed, tensor name, row), so rows can be generated in parallel and adding a tensor (e.g. the MTP
// block) never changes the values of the others.
#include "ds4/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <thread>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/quant.h"
#include "ds4/tokenizer.h"

namespace ds4 {
namespace {

// ---- deterministic elementary functions ----
// Only +, -, *, / and frexp (all exact or correctly rounded in IEEE 754), so the same bits come
// out of every libm. (A compiler that contracts a*b+c into an FMA could still change the last bit
// of a double; x86-64 without -mfma does not, and a 1-ulp double change almost never moves the
// float that is finally stored.)

constexpr double kLn2 = 0.693147180559945309417232121458176568;
constexpr double kHalfPi = 1.57079632679489661923132169163975144;

// ln(x) for finite x > 0: x = m·2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2·atanh((m-1)/(m+1)).
double det_log(double x) {
  int e = 0;
  double m = std::frexp(x, &e);  // m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2;
    e -= 1;
  }
  const double s = (m - 1) / (m + 1);  // |s| <= 0.1716, s² <= 0.0295
  const double s2 = s * s;
  double term = s, sum = 0;
  for (int k = 0; k < 14; ++k) {  // s2^14 / 29 < 1e-22
    sum += term / (2 * k + 1);
    term *= s2;
  }
  return 2 * sum + e * kLn2;
}

// sin and cos of a in [0, pi/2] by Taylor series (last term < 1e-18).
void det_sincos_quarter(double a, double* s, double* c) {
  const double a2 = a * a;
  double ts = a, tc = 1, ss = 0, sc = 0;
  for (int k = 1; k <= 13; ++k) {
    ss += ts;
    sc += tc;
    ts = -ts * a2 / ((2 * k) * (2 * k + 1));
    tc = -tc * a2 / ((2 * k - 1) * (2 * k));
  }
  *s = ss;
  *c = sc;
}

// sin(2·pi·u), cos(2·pi·u) for u in [0, 1): the quadrant split 4u = q + r is exact.
void det_sincos_turn(double u, double* s, double* c) {
  const double x = 4 * u;
  const int q = static_cast<int>(x);
  const double r = x - q;
  double sa = 0, ca = 0;
  det_sincos_quarter(r * kHalfPi, &sa, &ca);
  switch (q & 3) {
    case 0:
      *s = sa;
      *c = ca;
      break;
    case 1:
      *s = ca;
      *c = -sa;
      break;
    case 2:
      *s = -sa;
      *c = -ca;
      break;
    default:
      *s = -ca;
      *c = sa;
      break;
  }
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t stream_seed(uint64_t seed, uint64_t name_hash, uint64_t index) {
  return splitmix64(seed ^ splitmix64(name_hash ^ splitmix64(index)));
}

// ---- presets ----

std::vector<uint32_t> ratio_schedule(uint32_t n_layer) {
  // Real Flash: layers 0, 1 raw; then ratio 4 on even, 128 on odd layers (ds4-model.md §1.2).
  std::vector<uint32_t> r(n_layer);
  for (uint32_t il = 0; il < n_layer; ++il) r[il] = il < 2 ? 0 : (il % 2 == 0 ? 4 : 128);
  return r;
}

HParams preset_tiny() {
  HParams hp;
  hp.n_layer = 4;
  hp.n_vocab = 512;
  hp.n_embd = 256;
  hp.n_head = 8;
  hp.head_dim = 128;
  hp.n_rot = 64;
  hp.q_lora = 128;
  hp.o_lora = 64;
  hp.o_groups = 4;
  hp.window = 128;
  hp.n_idx_head = 4;
  hp.idx_head_dim = 128;
  hp.idx_top_k = 16;
  hp.n_expert = 8;
  hp.n_expert_used = 2;
  hp.n_expert_shared = 1;
  hp.n_ff_exp = 256;  // HF oracle: 64; 256 lets Q2_K / IQ2_XXS / Q4_K experts (256-blocks) apply
  hp.n_hash_layer = 3;
  return hp;
}

HParams preset_flash_shape() {
  HParams hp;
  hp.n_layer = 4;
  hp.n_vocab = 129280;
  hp.n_embd = 4096;
  hp.n_head = 64;
  hp.head_dim = 512;
  hp.n_rot = 64;
  hp.q_lora = 1024;
  hp.o_lora = 1024;
  hp.o_groups = 8;
  hp.window = 128;
  hp.n_idx_head = 64;
  hp.idx_head_dim = 128;
  hp.idx_top_k = 512;
  hp.n_expert = 16;
  hp.n_expert_used = 6;
  hp.n_expert_shared = 1;
  hp.n_ff_exp = 2048;
  hp.n_hash_layer = 3;
  return hp;
}

// The published Flash trunk: flash-shape with all 43 layers and 256 experts.
HParams preset_published() {
  HParams hp = preset_flash_shape();
  hp.n_layer = 43;
  hp.n_expert = 256;
  return hp;
}

bool is_published_preset(const std::string& preset) {
  return preset == "published" || preset == "published-mtp";
}

// The published sidecar's recipe (its file name: MTP-Q4K-Q8_0-F32): Q4_K routed experts, Q8_0
// projections (attention, shared expert, e_proj/h_proj), F32 for the HC and router matrices that
// ds4.c accepts as F16 or F32. (Embedding and output are not in a sidecar.)
QuantMix published_mtp_mix() {
  using Q = QType;
  return {"published-mtp", Q::F16, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q4_K, Q::Q4_K, Q::F32};
}

// ---- weights ----

struct Dist {
  bool hash_table = false;  // tid2eid: per token, n_used distinct experts
  double mean = 0, std = 1;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Distributions of hf_tiny_dsv4.py, keyed by GGUF name ("in" = ne0, the input width).
Dist dist_for(const TensorSpec& t) {
  const std::string& n = t.name;
  const double in = static_cast<double>(t.ne[0]);
  if (t.role == TensorRole::HashTable) return {true, 0, 0};
  if (n == "token_embd.weight") return {false, 0, 1};
  if (contains(n, "ffn_gate_exps") || contains(n, "ffn_up_exps") || contains(n, "ffn_gate_shexp") ||
      contains(n, "ffn_up_shexp"))
    return {false, 0, 5 / std::sqrt(in)};
  if (ends_with(n, "attn_sinks.weight")) return {false, 0, 1};
  if (ends_with(n, "_ape.weight")) return {false, 0, 0.5};
  if (contains(n, "hc_") && ends_with(n, "_scale.weight")) return {false, 1, 0.2};
  if (contains(n, "hc_") && ends_with(n, "_base.weight")) return {false, 0, 0.3};
  if (ends_with(n, "exp_probs_b.bias")) return {false, 0, 0.1};
  if (t.role == TensorRole::Vector) return {false, 1, 0.1};  // RMSNorm weights
  return {false, 0, 1 / std::sqrt(in)};
}

int64_t product(const std::vector<int64_t>& ne, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < ne.size(); ++i) p *= ne[i];
  return p;
}

// Runs body(begin, end) over [0, n) split into contiguous ranges, one per thread.
template <class F>
void parallel_rows(int64_t n, unsigned n_threads, F body) {
  unsigned t = n_threads ? n_threads : std::max(1u, std::thread::hardware_concurrency());
  t = static_cast<unsigned>(std::min<int64_t>(t, std::max<int64_t>(1, n / 16)));
  if (t <= 1) {
    body(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(t);
  for (unsigned i = 0; i < t; ++i) {
    threads.emplace_back([&, i] {
      try {
        body(n * i / t, n * (i + 1) / t);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Row r of a tensor as the quantised values give it: ne0 values from the row's own stream,
// quantised to `type` (or, for the hash table, a random choice of n_used distinct experts).
// `row` (ne0 floats) and `perm` (n_expert ints) are the caller's scratch.
void quantised_row(const TensorSpec& t, const Dist& dist, QType type, const HParams& hp, uint64_t seed,
                   uint64_t name_hash, int64_t r, uint8_t* dst, std::vector<float>& row, std::vector<int32_t>& perm) {
  const int64_t ne0 = t.ne[0];
  SynthRng rng(stream_seed(seed, name_hash, static_cast<uint64_t>(r)));
  if (dist.hash_table) {
    // Row r = token r: a random permutation prefix of n_used distinct experts (Fisher-Yates).
    perm.resize(hp.n_expert);
    for (uint32_t e = 0; e < hp.n_expert; ++e) perm[e] = static_cast<int32_t>(e);
    for (int64_t j = 0; j < ne0; ++j) {
      const uint64_t k = static_cast<uint64_t>(j) + rng.below(hp.n_expert - static_cast<uint64_t>(j));
      std::swap(perm[static_cast<size_t>(j)], perm[k]);
    }
    std::memcpy(dst, perm.data(), sizeof(int32_t) * static_cast<size_t>(ne0));
    return;
  }
  row.resize(static_cast<size_t>(ne0));
  for (auto& v : row) v = static_cast<float>(dist.mean + dist.std * rng.normal());
  if (type == QType::F32)
    std::memcpy(dst, row.data(), qtype_row_bytes(type, ne0));
  else
    quantize_row(type, row.data(), dst, ne0);
}

// The bytes of one tensor: rows of ne0 values from their own streams, quantised to `type`.
std::vector<uint8_t> make_tensor(const TensorSpec& t, QType type, const HParams& hp, uint64_t seed,
                                 unsigned n_threads) {
  const Dist dist = dist_for(t);
  const int64_t ne0 = t.ne[0], rows = product(t.ne, 1);
  const size_t row_bytes = qtype_row_bytes(type, ne0);
  std::vector<uint8_t> out(row_bytes * static_cast<size_t>(rows));
  const uint64_t name_hash = fnv1a64(t.name);
  parallel_rows(rows, n_threads, [&](int64_t r0, int64_t r1) {
    std::vector<float> row;
    std::vector<int32_t> perm;
    for (int64_t r = r0; r < r1; ++r)
      quantised_row(t, dist, type, hp, seed, name_hash, r, out.data() + row_bytes * static_cast<size_t>(r), row, perm);
  });
  return out;
}

// ---- random blocks (--values random) ----
//
// Quantising floats (the reference quantisers, IQ2_XXS's brute-force grid search above all) takes
// hours for the 80 GiB published layout. Random values instead fill each block's fields directly:
// random quants with a block scale chosen so that the dequantised values have the RMS of the
// tensor's distribution (dist_for), and mean about zero. Every byte pattern of these fields is a
// valid block; the scales are what keep the forward sane:
//   Q8_0     d = s·j (j in [0.75, 1.25), per block); 32 random int8 quants.
//   Q2_K     per 16-group scale sc in 8..15 and min m = round(3·sc/4) with dmin = 2d, so the
//            group mean d·(1.5·sc − 2·m) is within d of zero; random 2-bit quants.
//   Q4_K     per 32-group scale sc in 32..63 and min m = round(15·sc/16) with dmin = 8d (mean
//            d·(7.5·sc − 8·m), within 4d of zero); random 4-bit quants.
//   IQ2_XXS  d = s·j; random grid indices, sign indices and 4-bit sub-block scales (any byte
//            pattern is a grid point; sign masks are even by construction).
//   F16/BF16 uniform values with the distribution's mean and standard deviation (16 random
//            bits per value through a table).
// F32 and I32 (norms, scales, biases, the small HC matrices of some mixes, the hash table) keep the
// quantised path's values: they are a few MiB. s = the distribution's std / the type's unit RMS
// (the RMS of blocks generated with s = 1, measured once through dequantize_row).
//
// Streams: one SplitMix64 sequence per row, seeded from (seed, tensor name, row) as the quantised
// path's are, so no byte depends on the thread count or the piece size.

class FastRng {
 public:
  explicit FastRng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    const uint64_t r = splitmix64(s_);
    s_ += 0x9e3779b97f4a7c15ull;
    return r;
  }
  void bytes(uint8_t* p, size_t n) {  // n a multiple of 8
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t v = next();
      for (int b = 0; b < 8; ++b) p[i + b] = static_cast<uint8_t>(v >> (8 * b));
    }
  }

 private:
  uint64_t s_;
};

void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

bool has_random_blocks(QType type) {
  return type == QType::Q8_0 || type == QType::Q2_K || type == QType::Q4_K || type == QType::IQ2_XXS;
}

// One random block of `type` at dst with scale s (see above).
void random_block(QType type, float s, FastRng& rng, uint8_t* dst) {
  const uint64_t ctl = rng.next();
  const float jitter = 0.75f + 0.5f * static_cast<float>(ctl & 0xffff) * 0x1.0p-16f;
  const uint16_t dbits = f32_to_f16(s * jitter);
  switch (type) {
    case QType::Q8_0: {  // f16 d; int8 q[32]
      put_u16(dst, dbits);
      rng.bytes(dst + 2, 32);
      break;
    }
    case QType::Q2_K: {  // uint8 scales[16]; uint8 qs[64]; f16 d; f16 dmin
      uint8_t sc[16];
      rng.bytes(sc, 16);
      for (auto& b : sc) {
        const int scale = 8 + (b & 7), min = (3 * scale + 2) / 4;
        b = static_cast<uint8_t>(scale | (min << 4));
      }
      std::memcpy(dst, sc, 16);
      rng.bytes(dst + 16, 64);
      put_u16(dst + 80, dbits);
      put_u16(dst + 82, f32_to_f16(2.0f * f16_to_f32(dbits)));
      break;
    }
    case QType::Q4_K: {  // f16 d; f16 dmin; uint8 scales[12] (6-bit pairs); uint8 qs[128]
      put_u16(dst, dbits);
      put_u16(dst + 2, f32_to_f16(8.0f * f16_to_f32(dbits)));
      int sc[8], m[8];
      const uint64_t r = rng.next();
      for (int j = 0; j < 8; ++j) {
        sc[j] = 32 + static_cast<int>((r >> (5 * j)) & 31);
        m[j] = (15 * sc[j] + 8) / 16;
      }
      uint8_t* q = dst + 4;  // the inverse of get_scale_min_k4
      for (int j = 0; j < 4; ++j) {
        q[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
        q[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
      }
      rng.bytes(dst + 16, 128);
      break;
    }
    case QType::IQ2_XXS: {  // f16 d; uint16 qs[32]
      put_u16(dst, dbits);
      rng.bytes(dst + 2, 64);
      break;
    }
    default:
      fail(std::string("internal: no random blocks for ") + qtype_name(type));
  }
}

// The RMS of dequantised random blocks of `type` with s = 1 (4096 blocks from a fixed stream).
double measure_unit_rms(QType type) {
  const QTypeInfo& info = qtype_info(type);
  constexpr int kBlocks = 4096;
  std::vector<uint8_t> blocks(static_cast<size_t>(kBlocks) * info.block_bytes);
  FastRng rng(0x5eed0f0123456789ull);
  for (int b = 0; b < kBlocks; ++b) random_block(type, 1.0f, rng, blocks.data() + static_cast<size_t>(b) * info.block_bytes);
  std::vector<float> x(static_cast<size_t>(kBlocks) * info.block_elems);
  dequantize_row(type, blocks.data(), x.data(), static_cast<int64_t>(x.size()));
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  return std::sqrt(ss / static_cast<double>(x.size()));
}

double unit_rms(QType type) {
  // Function-local statics: initialised once, thread-safely, before any filler runs in parallel.
  static const double q8_0 = measure_unit_rms(QType::Q8_0), q2_k = measure_unit_rms(QType::Q2_K),
                      q4_k = measure_unit_rms(QType::Q4_K), iq2 = measure_unit_rms(QType::IQ2_XXS);
  switch (type) {
    case QType::Q8_0: return q8_0;
    case QType::Q2_K: return q2_k;
    case QType::Q4_K: return q4_k;
    case QType::IQ2_XXS: return iq2;
    default: fail(std::string("internal: no random blocks for ") + qtype_name(type));
  }
}

// Rows [r0, r0 + n) of tensor t as random values give them, at dst (row-major, whole rows).
class RandomRows {
 public:
  RandomRows(const TensorSpec& t, QType type, const HParams& hp, uint64_t seed, unsigned n_threads)
      : t_(t), type_(type), hp_(hp), seed_(seed), n_threads_(n_threads), dist_(dist_for(t)),
        name_hash_(fnv1a64(t.name)), row_bytes_(qtype_row_bytes(type, t.ne[0])) {
    if (has_random_blocks(type_)) scale_ = static_cast<float>(dist_.std / unit_rms(type_));
  }
  size_t row_bytes() const { return row_bytes_; }

  void operator()(int64_t r0, int64_t n, uint8_t* dst) const {
    // F16/BF16: the 65536 values a 16-bit uniform maps to, (u + 0.5) / 65536 across [-1, 1) of
    // the distribution's range (0.3 ms per piece; one table per tensor held until write() would
    // be MiBs for the whole model).
    std::vector<uint16_t> table;
    if (type_ == QType::F16 || type_ == QType::BF16) {
      table.resize(65536);
      const double half_width = dist_.std * std::sqrt(3.0);
      for (uint32_t u = 0; u < 65536; ++u) {
        const auto v = static_cast<float>(dist_.mean + half_width * ((2.0 * u + 1.0) / 65536.0 - 1.0));
        table[u] = type_ == QType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      }
    }
    parallel_rows(n, n_threads_, [&](int64_t a, int64_t b) {
      std::vector<float> row;
      std::vector<int32_t> perm;
      for (int64_t i = a; i < b; ++i) one_row(r0 + i, dst + row_bytes_ * static_cast<size_t>(i), table, row, perm);
    });
  }

 private:
  void one_row(int64_t r, uint8_t* dst, const std::vector<uint16_t>& table, std::vector<float>& row,
               std::vector<int32_t>& perm) const {
    const int64_t ne0 = t_.ne[0];
    if (has_random_blocks(type_)) {
      FastRng rng(stream_seed(seed_, name_hash_, static_cast<uint64_t>(r)));
      const QTypeInfo& info = qtype_info(type_);
      for (int64_t b = 0; b < ne0 / info.block_elems; ++b)
        random_block(type_, scale_, rng, dst + static_cast<size_t>(b) * info.block_bytes);
    } else if (type_ == QType::F16 || type_ == QType::BF16) {
      FastRng rng(stream_seed(seed_, name_hash_, static_cast<uint64_t>(r)));
      for (int64_t j = 0; j < ne0; j += 4) {
        const uint64_t bits = rng.next();
        for (int k = 0; k < 4 && j + k < ne0; ++k) put_u16(dst + 2 * (j + k), table[(bits >> (16 * k)) & 0xffff]);
      }
    } else {
      quantised_row(t_, dist_, type_, hp_, seed_, name_hash_, r, dst, row, perm);
    }
  }

  const TensorSpec& t_;
  QType type_;
  const HParams& hp_;
  uint64_t seed_;
  unsigned n_threads_;
  Dist dist_;
  uint64_t name_hash_;
  size_t row_bytes_;
  float scale_ = 0;
};

}  // namespace

// ---- SynthRng ----

double SynthRng::uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }

uint64_t SynthRng::below(uint64_t n) {
  if (n == 0) fail("SynthRng::below(0)");
  // Reject the top partial bucket so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x = gen_();
  while (x >= limit) x = gen_();
  return x % n;
}

double SynthRng::normal() {
  if (have_spare_) {
    have_spare_ = false;
    return spare_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * det_log(u1));  // sqrt is correctly rounded
  double s = 0, c = 0;
  det_sincos_turn(u2, &s, &c);
  spare_ = r * s;
  have_spare_ = true;
  return r * c;
}

uint64_t synth_stream_seed(uint64_t seed, const std::string& name, uint64_t index) {
  return stream_seed(seed, fnv1a64(name), index);
}

// ---- public API ----

std::vector<std::string> synth_presets() { return {"tiny", "flash-shape", "published", "published-mtp"}; }

bool synth_preset_is_weightless(const std::string& preset) { return is_published_preset(preset); }

std::vector<std::string> synth_value_kinds() { return {"quantised", "random", "zero"}; }

std::string synth_values(const SynthOptions& opt) {
  if (opt.values.empty()) return synth_preset_is_weightless(opt.preset) ? "zero" : "quantised";
  for (const std::string& v : synth_value_kinds())
    if (opt.values == v) return v;
  fail("unknown --values '" + opt.values + "' (known: quantised, random, zero)");
}

std::string synth_model_name(const SynthOptions& opt) {
  // The preset's own values keep the name they always had (the tiny model's cache path is built
  // from it); other values are named.
  SynthOptions preset_default = opt;
  preset_default.values.clear();
  const std::string v = synth_values(opt);
  const std::string values = v == synth_values(preset_default) ? "" : "-" + v;
  return "ds4-synth-" + opt.preset + "-" + opt.quant_mix + values + "-seed" + std::to_string(opt.seed);
}

HParams synth_hparams(const SynthOptions& opt) {
  HParams hp;
  if (opt.preset == "tiny")
    hp = preset_tiny();
  else if (opt.preset == "flash-shape")
    hp = preset_flash_shape();
  else if (is_published_preset(opt.preset))
    hp = preset_published();
  else
    fail("unknown synth preset '" + opt.preset + "' (known: tiny, flash-shape, published, published-mtp)");
  if (opt.n_layer) hp.n_layer = opt.n_layer;
  if (opt.n_vocab) hp.n_vocab = opt.n_vocab;
  if (opt.n_ff_exp) hp.n_ff_exp = opt.n_ff_exp;
  if (opt.n_expert) {
    hp.n_expert = opt.n_expert;
    hp.n_expert_used = std::min(hp.n_expert_used, hp.n_expert);
  }
  hp.ratios = ratio_schedule(hp.n_layer);
  hp.n_hash_layer = std::min(hp.n_hash_layer, hp.n_layer);
  hp.clamp_exp.assign(hp.n_layer, 10.f);
  hp.clamp_shexp.assign(hp.n_layer, 10.f);
  hp.n_ctx_train = 1048576;
  // The published trunk declares its MTP block (nextn_predict_layers = 1) but ships it apart.
  hp.n_mtp = opt.mtp || opt.mtp_sidecar || is_published_preset(opt.preset) ? 1 : 0;
  hp.validate("synth preset '" + opt.preset + "'");
  return hp;
}

std::vector<QType> plan_tensor_types(const std::vector<TensorSpec>& specs, const QuantMix& mix) {
  std::vector<QType> types;
  types.reserve(specs.size());
  for (const TensorSpec& t : specs) {
    const QType type = mix.type_for(t.role);
    const int block = qtype_info(type).block_elems;
    if (t.ne.empty() || t.ne[0] % block != 0)
      fail("quant mix '" + mix.name + "': tensor '" + t.name + "' has ne0 = " +
           std::to_string(t.ne.empty() ? 0 : t.ne[0]) + ", not a multiple of the " +
           std::to_string(block) + "-element blocks of " + qtype_name(type));
    types.push_back(type);
  }
  return types;
}

namespace {

// The sidecar: the MTP block's tensors renamed (mtp_sidecar_name), eh_proj's rows cut into the
// e_proj and h_proj halves (d is a multiple of every block size, so the halves are whole blocks
// and the bytes are those of the single file), in ds4.c's order.
void write_mtp_sidecar(const SynthOptions& opt, const HParams& hp, const QuantMix& mix, const std::string& values,
                       const std::string& path) {
  const std::vector<TensorSpec> single = expected_tensors(hp);
  const std::vector<TensorSpec> side = expected_mtp_sidecar_tensors(hp);
  std::map<std::string, size_t> side_index;
  for (size_t i = 0; i < side.size(); ++i) side_index[side[i].name] = i;
  const std::vector<QType> types = plan_tensor_types(side, mix);  // fail before any work
  const bool zero = values == "zero", random = values == "random";
  std::vector<std::vector<uint8_t>> data(side.size());
  std::vector<GgufWriter::RowFiller> fill(side.size());
  if (!zero) {
    const std::string block = "blk." + std::to_string(hp.n_layer) + ".";
    for (const TensorSpec& t : single) {
      if (t.name.rfind(block, 0) != 0) continue;
      const std::string name = mtp_sidecar_name(hp, t.name);
      if (!name.empty()) {
        const size_t i = side_index.at(name);
        if (random) fill[i] = RandomRows(t, types[i], hp, opt.seed, opt.n_threads);
        else data[i] = make_tensor(t, types[i], hp, opt.seed, opt.n_threads);
        continue;
      }
      const size_t ie = side_index.at("mtp.0.e_proj.weight"), ih = side_index.at("mtp.0.h_proj.weight");
      if (types[ie] != types[ih]) fail("internal: e_proj and h_proj differ in type");
      const size_t half = qtype_row_bytes(types[ie], hp.n_embd);
      if (random) {
        const RandomRows eh(t, types[ie], hp, opt.seed, opt.n_threads);
        for (size_t k = 0; k < 2; ++k)
          fill[k == 0 ? ie : ih] = [eh, half, k](int64_t r0, int64_t n, uint8_t* dst) {
            std::vector<uint8_t> rows(eh.row_bytes() * static_cast<size_t>(n));
            eh(r0, n, rows.data());
            for (int64_t r = 0; r < n; ++r)
              std::memcpy(dst + half * static_cast<size_t>(r), rows.data() + (2 * static_cast<size_t>(r) + k) * half, half);
          };
        continue;
      }
      const std::vector<uint8_t> eh = make_tensor(t, types[ie], hp, opt.seed, opt.n_threads);
      for (int64_t r = 0; r < t.ne[1]; ++r) {
        const uint8_t* row = eh.data() + 2 * half * static_cast<size_t>(r);
        data[ie].insert(data[ie].end(), row, row + half);
        data[ih].insert(data[ih].end(), row + half, row + 2 * half);
      }
    }
  }
  GgufWriter w;
  w.set_str("general.architecture", kMtpSidecarArch);
  // The published sidecar's name (so the fixture's header, and its size, match the real file's).
  w.set_str("general.name", opt.preset == "published-mtp" ? "DeepSeek V4 Flash MTP support" : synth_model_name(opt) + "-mtp");
  // The keys the published sidecar carries (it has no tokenizer and no trunk hyperparameters);
  // the loader compares every deepseek4.* shape key a sidecar has with the trunk.
  w.set_u32("deepseek4.expert_count", hp.n_expert);
  w.set_u32("deepseek4.mtp_layer_count", 1);
  w.set_u32("deepseek4.nextn_predict_layers", 1);
  if (!is_published_preset(opt.preset)) {
    w.set_u32("deepseek4.embedding_length", hp.n_embd);
    w.set_u32("deepseek4.vocab_size", hp.n_vocab);
    w.set_u32("deepseek4.hyper_connection.count", hp.n_hc);
  }
  for (size_t i = 0; i < side.size(); ++i) {
    if (zero) w.add_zero_tensor(side[i].name, side[i].ne, types[i]);
    else if (random) w.add_generated_tensor(side[i].name, side[i].ne, types[i], fill[i]);
    else w.add_tensor(side[i].name, side[i].ne, types[i], data[i].data(), data[i].size());
  }
  w.write(path);
}

}  // namespace

void write_synth_model(const SynthOptions& opt, const std::string& path) {
  const HParams hp = synth_hparams(opt);
  const bool published = is_published_preset(opt.preset);
  const std::string values = synth_values(opt);
  if (opt.mtp_sidecar || opt.preset == "published-mtp") {
    write_mtp_sidecar(opt, hp, opt.preset == "published-mtp" ? published_mtp_mix() : QuantMix::by_name(opt.quant_mix),
                      values, path);
    return;
  }
  const QuantMix mix = QuantMix::by_name(opt.quant_mix);
  HParams tensors_hp = hp;
  if (published) tensors_hp.n_mtp = 0;  // declared in the metadata, shipped as the sidecar
  const std::vector<TensorSpec> specs = expected_tensors(tensors_hp);
  const std::vector<QType> types = plan_tensor_types(specs, mix);  // fail before any work

  GgufWriter w;
  // flash-shape is GiBs: quantised tensors wait on disk, not in memory (random ones are
  // generated into the output while it is written; zero ones are holes).
  if (values == "quantised") w.spill_tensors_near(path);
  hp.write(w);
  w.set_str("general.name", synth_model_name(opt));
  write_tokenizer_metadata(w, make_synthetic_vocab(static_cast<int32_t>(hp.n_vocab)));
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    // attn_output_a goes out 3-D [in, o_lora, groups] (llama.cpp's layout; same bytes), except in
    // the published layout, which has it 2-D as ds4.c's weights_validate_layout checks.
    const std::vector<int64_t>& ne = t.alt_ne.empty() || published ? t.ne : t.alt_ne;
    if (values == "zero") {
      w.add_zero_tensor(t.name, ne, types[i]);
    } else if (values == "random") {
      w.add_generated_tensor(t.name, ne, types[i], RandomRows(t, types[i], hp, opt.seed, opt.n_threads));
    } else {
      std::vector<uint8_t> data = make_tensor(t, types[i], hp, opt.seed, opt.n_threads);
      w.add_tensor(t.name, ne, types[i], data.data(), data.size());
    }
  }
  w.write(path);
}

}  // namespace ds4
