// Synthetic DS4 models: seeded random weights for any preset shape and quant mix, written as a
// deepseek4 GGUF with a synthetic BPE vocabulary. The "tiny" preset is the HF oracle's config
// (tests/fixtures/hf-tiny) with a 256-wide expert FFN so the real ds4 quant mix applies; the
// "flash-shape" preset has every per-layer dimension of real Flash with few layers and experts.
// "published" and "published-mtp" are weightless CI fixtures of the files users run: the tensor
// directory and deepseek4.* metadata of DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2
// .gguf (43 layers, 256 experts, nextn_predict_layers = 1 with the MTP block left to the sidecar)
// and of its sidecar DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf, with every tensor's bytes zero and
// left as a sparse hole (the 80 GiB trunk takes a few MiB of disk).
//
// Values (SynthOptions::values): "quantised" (the default of tiny and flash-shape) draws floats
// and quantises them with the reference quantisers; "zero" (the default of the published presets)
// writes holes; "random" fills each quant block's fields directly with random quants and sane
// scales (same RMS per tensor as the quantised values), generated into the output while it is
// written: the published layout with values, 80 GiB, in minutes and without holding it in memory
// (`ds4-synth --preset published --values random`; `--preset published-mtp --values random` is
// its sidecar).
//
// Same options -> same file bytes, on any platform: weights come from per-row mt19937_64 streams
// and our own Box-Muller with hand-written log/sin/cos (std::normal_distribution and libm are
// implementation-defined), and no value depends on the thread count.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "ds4/model.h"

namespace ds4 {

struct SynthOptions {
  std::string preset = "tiny";    // synth_presets()
  std::string quant_mix = "ds4";  // QuantMix::names()
  uint64_t seed = 1234;
  uint32_t n_layer = 0, n_expert = 0, n_vocab = 0;  // 0 = preset default
  uint32_t n_ff_exp = 0;   // expert FFN width; 0 = preset default (tiny: 256, HF: 64)
  bool mtp = false;        // add one MTP block (hp.n_mtp = 1)
  // Write only the MTP block, as a deepseek4_mtp_support sidecar (mtp.0.*) for the trunk these
  // options describe; its weights are the bytes `mtp` would put in the single file (eh_proj
  // split into e_proj and h_proj). Implied by preset published-mtp.
  bool mtp_sidecar = false;
  unsigned n_threads = 0;  // 0 = hardware concurrency; never changes the output
  // "quantised", "random" or "zero" (synth_value_kinds()); empty = the preset's (synth_values()).
  std::string values;
};

std::vector<std::string> synth_presets();
// Hyperparameters of a preset with the overrides applied; throws naming a bad preset/override.
// More layers follow the real schedule (0, 0, then 4 / 128 alternating); hash layers = min(3, L).
HParams synth_hparams(const SynthOptions& opt);
// Generates and writes the model (atomically, via the GGUF writer). Checks the quant mix against
// every tensor before generating anything.
void write_synth_model(const SynthOptions& opt, const std::string& path);
// True for the presets whose weights are all zero, written as sparse holes (unless --values
// says otherwise).
bool synth_preset_is_weightless(const std::string& preset);
std::vector<std::string> synth_value_kinds();
// The values `opt` asks for: opt.values, or the preset's default ("zero" for the published
// presets, "quantised" otherwise); throws a one-line error for an unknown kind.
std::string synth_values(const SynthOptions& opt);

// The GGUF type of every tensor of `specs` under `mix`, in order. Throws a one-line error naming
// the first tensor whose ne0 is not a multiple of its type's block size. (Shared with ds4-convert.)
std::vector<QType> plan_tensor_types(const std::vector<TensorSpec>& specs, const QuantMix& mix);
// The GGUF name of a synthetic or converted model: "ds4-synth-<preset>-<mix>-seed<seed>".
std::string synth_model_name(const SynthOptions& opt);

// Deterministic random numbers: mt19937_64 (fully specified by the standard) plus our own
// uniform/normal transforms, so results are identical across standard libraries.
class SynthRng {
 public:
  explicit SynthRng(uint64_t seed) : gen_(seed) {}
  uint64_t next() { return gen_(); }
  double uniform();            // in [0, 1), 53 random bits
  uint64_t below(uint64_t n);  // uniform in [0, n), unbiased (rejection)
  double normal();             // N(0, 1), Box-Muller (pairs, the second one cached)
 private:
  std::mt19937_64 gen_;
  bool have_spare_ = false;
  double spare_ = 0;
};

// The seed of one independent stream (e.g. one tensor row): a SplitMix64 mix of the three parts.
uint64_t synth_stream_seed(uint64_t seed, const std::string& name, uint64_t index);

}  // namespace ds4
