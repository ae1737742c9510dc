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

namespace {

// True if the file holds any tensor of block `il` (the MTP block's index is n_layer).
bool has_block_tensors(const GgufFile& f, uint32_t il) {
  const std::string prefix = "blk." + std::to_string(il) + ".";
  for (const GgufTensor& t : f.tensors())
    if (t.name.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}

// The sidecar's own metadata is sparse (the published one has general.* and a few deepseek4.*
// keys); every shape key it does carry must agree with the trunk. The tensor shapes are checked
// by the binder against the trunk's hyperparameters.
void check_sidecar_metadata(const GgufFile& mtp, const GgufFile& trunk, const HParams& hp) {
  const std::string arch = mtp.get_str_or("general.architecture", "");
  if (arch != kMtpSidecarArch)
    fail(mtp.path() + ": metadata key 'general.architecture' is '" + arch + "', expected '" + kMtpSidecarArch +
         "' (an MTP sidecar for " + trunk.path() + ")");
  const std::pair<const char*, uint32_t> keys[] = {
      {"deepseek4.embedding_length", hp.n_embd},      {"deepseek4.vocab_size", hp.n_vocab},
      {"deepseek4.hyper_connection.count", hp.n_hc},  {"deepseek4.expert_count", hp.n_expert},
      {"deepseek4.expert_used_count", hp.n_expert_used}, {"deepseek4.attention.head_count", hp.n_head},
      {"deepseek4.attention.key_length", hp.head_dim}, {"deepseek4.expert_feed_forward_length", hp.n_ff_exp}};
  for (const auto& [key, want] : keys) {
    if (!mtp.has(key)) continue;
    const uint32_t got = mtp.get_u32(key);
    if (got != want)
      fail(mtp.path() + ": metadata key '" + key + "' is " + std::to_string(got) + ", the trunk " + trunk.path() +
           " has " + std::to_string(want));
  }
  const uint32_t layers = mtp.get_u32_or("deepseek4.nextn_predict_layers", 1);
  if (layers != 1)
    fail(mtp.path() + ": metadata key 'deepseek4.nextn_predict_layers' is " + std::to_string(layers) +
         ", expected 1 (one MTP block)");
  // n_embd and n_hc have no key in the published sidecar: name them from the head's shapes
  // before the binder reports a bare shape mismatch.
  const auto dim_check = [&](const char* tensor, size_t dim, int64_t want, const char* what) {
    const GgufTensor* t = mtp.find_tensor(tensor);
    if (!t) return;  // the binder names the missing tensor
    if (t->ne.size() <= dim || t->ne[dim] != want)
      fail(mtp.path() + ": tensor '" + tensor + "' gives " + what + " " +
           (t->ne.size() > dim ? std::to_string(t->ne[dim]) : std::string("?")) + ", the trunk " + trunk.path() +
           " has " + std::to_string(want));
  };
  dim_check("mtp.0.e_proj.weight", 0, hp.n_embd, "n_embd");
  dim_check("mtp.0.hc_head_base.weight", 0, hp.n_hc, "hyper_connection.count");
}

}  // namespace

std::shared_ptr<Model> Model::load(const std::string& path, const std::string& mtp_path) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = GgufFile::open(path);
  m->hp_ = HParams::from_gguf(*m->file_);
  // nextn_predict_layers = 1 with no MTP tensors: the published trunk, whose block is a sidecar.
  const bool mtp_in_trunk = m->hp_.n_mtp > 0 && has_block_tensors(*m->file_, m->hp_.n_layer);
  if (!mtp_in_trunk) m->hp_.n_mtp = 0;
  if (!mtp_path.empty() && mtp_in_trunk)
    fail(mtp_path + ": an MTP sidecar was given, but " + path + " already holds its MTP block (blk." +
         std::to_string(m->hp_.n_layer) + ".*)");
  m->weights_ = std::make_unique<ModelWeights>(ModelWeights::bind(*m->file_, m->hp_));
  if (!mtp_path.empty()) {
    m->mtp_file_ = GgufFile::open(mtp_path);
    check_sidecar_metadata(*m->mtp_file_, *m->file_, m->hp_);
    m->weights_->mtp.push_back(ModelWeights::bind_mtp_sidecar(*m->mtp_file_, m->hp_));
    m->hp_.n_mtp = 1;
    m->mtp_path_ = mtp_path;
  }
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
