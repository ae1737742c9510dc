// Shared helpers of the differential debugger (see ds4/ablate_util.h).
#include "ds4/ablate_util.h"

#include <unistd.h>

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <map>
#include <fstream>
#include <sstream>

#include "ds4/drivers.h"
#include "ds4/error.h"
#include "ds4/gates.h"

namespace ds4 {

// ---- JSON --------------------------------------------------------------------------------------


namespace {
// Arrays of scalars stay on one line (heatmap rows, curves); objects and nested arrays indent.
void indent_value(const Json& v, int depth, std::string& out) {
  const std::string pad(2 * (depth + 1), ' '), close(2 * depth, ' ');
  if (v.is_array()) {
    bool flat = true;
    for (const Json& x : v.array) flat &= !x.is_array() && !x.is_object();
    if (flat || v.array.empty()) {
      out += v.dump();
      return;
    }
    out += "[\n";
    for (size_t i = 0; i < v.array.size(); ++i) {
      out += pad;
      indent_value(v.array[i], depth + 1, out);
      out += i + 1 < v.array.size() ? ",\n" : "\n";
    }
    out += close + "]";
  } else if (v.is_object()) {
    if (v.members.empty()) {
      out += "{}";
      return;
    }
    out += "{\n";
    for (size_t i = 0; i < v.members.size(); ++i) {
      out += pad + jstr(v.members[i].first).dump() + ": ";
      indent_value(v.members[i].second, depth + 1, out);
      out += i + 1 < v.members.size() ? ",\n" : "\n";
    }
    out += close + "}";
  } else {
    out += v.dump();
  }
}
}  // namespace

std::string json_indented(const Json& v) {
  std::string out;
  indent_value(v, 0, out);
  return out + "\n";
}

Json read_json_file(const std::string& path) { return Json::parse(read_text_file(path), path); }

// ---- files -------------------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(path + ": cannot create " + tmp);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.flush();
    if (!f) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail(path + ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail(path + ": cannot rename the temporary file into place");
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string safe_file_name(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  return out.empty() ? "_" : out;
}

// ---- progress ----------------------------------------------------------------------------------

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::FILE* out, int64_t total, std::string unit, int64_t already_done)
    : out_(out), total_(total), base_(already_done), unit_(std::move(unit)),
      tty_(out && ::isatty(::fileno(out))), start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, const std::string& note) {
  if (!out_) return;
  const double el =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // The rate counts only steps this process ran: resumed steps cost nothing.
  const int64_t ran = done - base_;
  const double eta = ran > 0 ? el / static_cast<double>(ran) * static_cast<double>(total_ - done) : NAN;
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
  std::string bar(static_cast<size_t>(filled), '#');
  bar += std::string(static_cast<size_t>(kWidth - filled), '.');
  std::fprintf(out_, "%s[%s] %lld/%lld %s  elapsed %s  eta %s  %s%s", tty_ ? "\r\x1b[K" : "",
               bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_),
               unit_.c_str(), format_duration(el).c_str(),
               done >= total_ ? "0:00" : format_duration(eta).c_str(), note.c_str(),
               tty_ ? "" : "\n");
  std::fflush(out_);
}

void Progress::finish() {
  if (out_ && tty_) std::fputc('\n', out_);
}

// ---- token sources -----------------------------------------------------------------------------

std::vector<PromptInput> default_prompts() {
  return {{"hello", "Hello! Who are you?", ""},
          {"haiku", "Write a haiku about the sea.", ""},
          {"math", "What is 17 times 23?", ""}};
}

std::vector<PromptInput> read_prompt_file(const std::string& path) {
  std::istringstream in(read_text_file(path));
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::vector<PromptInput> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    PromptInput p;
    p.name = "p" + std::to_string(out.size());
    if (line[0] == '@') {
      if (line.size() == 1) fail(path + ":" + std::to_string(n) + ": '@' names no token file");
      std::filesystem::path f(line.substr(1));
      p.token_file = (f.is_relative() ? dir / f : f).string();
    } else {
      p.text = line;
    }
    out.push_back(p);
  }
  if (out.empty()) fail(path + ": no prompts (one per line; '#' comments; '@file' for token files)");
  return out;
}

std::vector<int32_t> prompt_tokens(const std::shared_ptr<const Model>& model, const PromptInput& p,
                                   Profile profile, int64_t generate) {
  std::vector<int32_t> toks =
      p.token_file.empty()
          ? tokens_from_prompt(*model, "You are a helpful assistant", p.text, true)
          : read_token_file(p.token_file, model->hparams().n_vocab);
  if (toks.empty()) fail("prompt '" + p.name + "' has no tokens");
  return generate > 0 ? teacher_forced_tokens(model, profile, toks, generate) : toks;
}

// ---- divergence points -------------------------------------------------------------------------

std::string DivPoint::where() const {
  if (!found()) return "none";
  return "position " + std::to_string(pos) + ", layer " + std::to_string(layer) + ", tap '" + tap +
         "'";
}

Json divpoint_json(const DivPoint& p) {
  if (!p.found()) return jnull();
  Json j = jobj();
  jput(j, "pos", jint(p.pos));
  jput(j, "layer", jint(p.layer));
  jput(j, "tap", jstr(p.tap));
  jput(j, "tap_index", jint(p.tap_index));
  jput(j, "variant_ref", jstr(p.variant_ref));
  jput(j, "variant_cand", jstr(p.variant_cand));
  bool fast = false;
  const GateInfo* g = gate_of_variant(p.variant_cand, &fast);
  jput(j, "gate", g ? jstr(g->id) : jnull());
  jput(j, "gate_side", g ? jstr(fast ? "fast" : "exact") : jnull());
  jput(j, "n_bitdiff", jint(static_cast<int64_t>(p.n_bitdiff)));
  jput(j, "n", jint(static_cast<int64_t>(p.n)));
  jput(j, "max_abs", jnum(p.max_abs));
  jput(j, "channel", jint(p.channel));
  jput(j, "ref_value", jnum(p.ref_value));
  jput(j, "cand_value", jnum(p.cand_value));
  jput(j, "only_ref", jbool(p.only_ref));
  jput(j, "only_cand", jbool(p.only_cand));
  return j;
}

DivPoint divpoint_from_json(const Json& j) {
  DivPoint p;
  if (j.is_null()) return p;
  p.pos = jint_at(j, "pos", kNoDivergence);
  p.layer = static_cast<int>(jint_at(j, "layer"));
  p.tap = jstr_at(j, "tap");
  p.tap_index = static_cast<int>(jint_at(j, "tap_index", -1));
  p.variant_ref = jstr_at(j, "variant_ref");
  p.variant_cand = jstr_at(j, "variant_cand");
  p.n_bitdiff = static_cast<uint64_t>(jint_at(j, "n_bitdiff"));
  p.n = static_cast<uint64_t>(jint_at(j, "n"));
  p.max_abs = jnum_at(j, "max_abs");
  p.channel = jint_at(j, "channel", -1);
  p.ref_value = jnum_at(j, "ref_value");
  p.cand_value = jnum_at(j, "cand_value");
  p.only_ref = jbool_at(j, "only_ref");
  p.only_cand = jbool_at(j, "only_cand");
  return p;
}

const GateInfo* gate_of_variant(const std::string& variant, bool* fast) {
  for (const GateInfo& g : all_gates())
    if (variant == g.fast_variant) {
      if (fast) *fast = true;
      return &g;
    }
  // Exact variants are shared by some gates (e.g. matvec_q8__warp8): the first one is named.
  for (const GateInfo& g : all_gates())
    if (variant == g.exact_variant) {
      if (fast) *fast = false;
      return &g;
    }
  return nullptr;
}

}  // namespace ds4

namespace ds4 {

// ---- delta debugging ---------------------------------------------------------------------------

std::vector<int> ddmin(const std::vector<int>& items,
                       const std::function<bool(const std::vector<int>&)>& test) {
  std::map<std::vector<int>, bool> cache;
  auto holds = [&](std::vector<int> s) {
    std::sort(s.begin(), s.end());
    auto it = cache.find(s);
    if (it != cache.end()) return it->second;
    const bool r = test(s);
    cache.emplace(s, r);
    return r;
  };
  std::vector<int> c = items;
  size_t n = 2;
  while (c.size() >= 2) {
    // Split c into n nearly equal chunks; try each chunk, then each complement.
    std::vector<std::vector<int>> chunks;
    const size_t base = c.size() / n, extra = c.size() % n;
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t len = base + (i < extra ? 1 : 0);
      chunks.emplace_back(c.begin() + static_cast<std::ptrdiff_t>(at),
                          c.begin() + static_cast<std::ptrdiff_t>(at + len));
      at += len;
    }
    bool reduced = false;
    for (const auto& ch : chunks)
      if (holds(ch)) {
        c = ch;
        n = 2;
        reduced = true;
        break;
      }
    if (!reduced && n > 2) {
      for (size_t i = 0; i < n && !reduced; ++i) {
        std::vector<int> comp;
        for (size_t k = 0; k < n; ++k)
          if (k != i) comp.insert(comp.end(), chunks[k].begin(), chunks[k].end());
        if (holds(comp)) {
          c = comp;
          n = std::max<size_t>(n - 1, 2);
          reduced = true;
        }
      }
    }
    if (reduced) continue;
    if (n >= c.size()) break;
    n = std::min(c.size(), 2 * n);
  }
  // A single remaining element may still be removable (the empty set can hold).
  if (c.size() == 1 && holds({})) c.clear();
  return c;
}

}  // namespace ds4
