// Model loading, profile names and sampling helpers.
#include <algorithm>
#include <cmath>

#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/tokenizer.h"
#include "forward/weights.h"

namespace ds4 {

const char* engine_version() { return "0.1.0"; }
const char* engine_git_sha() { return DS4_GIT_SHA; }

const char* profile_name(Profile p) { return p == Profile::Ds4 ? "ds4" : "plain"; }

Profile profile_from_name(const std::string& name) {
  if (name == "ds4") return Profile::Ds4;
  if (name == "plain") return Profile::Plain;
  fail("unknown numerics profile '" + name + "' (known: ds4, plain)");
}

std::shared_ptr<Model> Model::load(const std::string& path) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = GgufFile::open(path);
  m->hp_ = HParams::from_gguf(*m->file_);
  m->weights_ = std::make_unique<ModelWeights>(ModelWeights::bind(*m->file_, m->hp_));
  m->tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(*m->file_));
  if (m->tokenizer_->vocab_size() > static_cast<int32_t>(m->hp_.n_vocab))
    fail(path + ": tokenizer has " + std::to_string(m->tokenizer_->vocab_size()) +
         " tokens, more than vocab_size " + std::to_string(m->hp_.n_vocab));
  return m;
}

Model::~Model() = default;
const std::string& Model::path() const { return file_->path(); }

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  return best;
}

// xorshift64*: a tiny deterministic generator so sampling is reproducible everywhere.
static double next_uniform(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return static_cast<double>((s * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}

int32_t sample_token(std::span<const float> logits, float temperature, uint64_t& rng_state) {
  if (temperature <= 0.0f) return argmax(logits);
  if (rng_state == 0) rng_state = 0x9E3779B97F4A7C15ULL;
  double mx = -INFINITY;
  for (float l : logits) mx = std::max(mx, static_cast<double>(l));
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
  double u = next_uniform(rng_state) * sum;
  for (size_t i = 0; i < p.size(); ++i) {
    u -= p[i];
    if (u <= 0) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(p.size() - 1);
}

}  // namespace ds4
