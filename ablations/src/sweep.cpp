// Width and prompt-length sweep (see ds4/sweep.h).
#include "ds4/sweep.h"

#include <algorithm>
#include <sstream>

#include "ds4/error.h"
#include "ds4/gguf.h"

namespace ds4 {

std::vector<int64_t> parse_lengths(const std::string& spec, int64_t n) {
  std::vector<int64_t> out;
  if (n < 1) fail("sweep: no tokens");
  if (spec == "pow2") {
    for (int64_t l = 1; l < n; l *= 2) out.push_back(l);
    out.push_back(n);
    return out;
  }
  std::stringstream ss(spec);
  std::string item;
  auto num = [&](const std::string& s) {
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end || v < 1) fail("bad flag: --lengths item '" + item + "' (expected L, A-B or pow2)");
    return std::min<int64_t>(v, n);
  };
  while (std::getline(ss, item, ',')) {
    const size_t dash = item.find('-');
    if (dash == std::string::npos) {
      out.push_back(num(item));
    } else {
      const int64_t a = num(item.substr(0, dash)), b = num(item.substr(dash + 1));
      for (int64_t l = a; l <= b; ++l) out.push_back(l);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (out.empty()) fail("bad flag: --lengths selects nothing");
  return out;
}

namespace {

SweepPoint point_of(const std::string& axis, int64_t v, const RunDivergence& d, double seconds) {
  SweepPoint p;
  p.axis = axis;
  p.value = v;
  p.bit_equal = d.bit_equal();
  p.first = d.first_bit;
  p.token_fork = d.logits.first_flip;
  p.logits_max_abs = d.logits.max_abs;
  p.kld_mean = d.logits.kld_mean;
  p.flips = d.logits.flips();
  p.seconds = seconds;
  return p;
}

void changes_of(const std::vector<SweepPoint>& pts, std::vector<SweepChange>& out) {
  for (size_t i = 1; i < pts.size(); ++i) {
    const SweepPoint &a = pts[i - 1], &b = pts[i];
    std::string what;
    if (a.bit_equal != b.bit_equal) {
      what = b.bit_equal ? "becomes bit-equal" : "stops being bit-equal (first divergence " + b.first.where() + ")";
    } else if (!a.bit_equal && a.first.pos != b.first.pos) {
      what = "fork moves from position " + std::to_string(a.first.pos) + " to " + std::to_string(b.first.pos) +
             " (" + b.first.where() + ")";
    } else if (!a.bit_equal && (a.first.layer != b.first.layer || a.first.tap != b.first.tap)) {
      what = "first divergent kernel changes: layer " + std::to_string(a.first.layer) + " '" + a.first.tap +
             "' -> layer " + std::to_string(b.first.layer) + " '" + b.first.tap + "' (" + b.first.variant_cand + ")";
    }
    if (!what.empty()) out.push_back({a.axis, a.value, b.value, what});
  }
}

}  // namespace

SweepResult sweep(const SweepConfig& cfg) {
  if (cfg.tokens.empty()) fail("sweep: no tokens");
  auto model = Model::load(cfg.model_path, cfg.mtp_path);
  SweepResult r;
  r.model = model->file().get_str_or("general.name", cfg.model_path);
  r.gates = cfg.gates.to_string();
  r.profile = profile_name(cfg.profile);
  r.n_tokens = static_cast<int64_t>(cfg.tokens.size());
  r.prefix = std::clamp<int64_t>(cfg.prefix, 1, r.n_tokens);

  RunSpec plain;
  plain.profile = cfg.profile;
  plain.threads = cfg.threads;
  plain.tokens = cfg.tokens;
  ReferenceRecorder rec(make_manifest(*model, plain, "ds4-parity sweep (reference)"), cfg.capture);
  run_model(model, plain, &rec);
  const auto ref = rec.finish();

  const int64_t total = cfg.max_width + static_cast<int64_t>(cfg.lengths.size());
  Progress bar(cfg.progress, total, "runs");
  int64_t done = 0;
  for (int64_t w = 1; w <= cfg.max_width; ++w) {
    RunSpec s = plain;
    s.mode = RunMode::Verify;
    s.gates = cfg.gates;
    s.width = w;
    s.prefix = r.prefix;
    CompareSink sink(ref, cfg.compare);
    const RunResult rr = run_model(model, s, &sink);
    r.widths.push_back(point_of("width", w, sink.finish(), rr.seconds));
    bar.update(++done, "width " + std::to_string(w));
  }
  for (int64_t l : cfg.lengths) {
    RunSpec s = plain;
    s.mode = RunMode::Batched;
    s.gates = cfg.gates;
    s.width = 0;
    s.tokens.assign(cfg.tokens.begin(), cfg.tokens.begin() + l);
    CompareSink sink(ref, cfg.compare);
    const RunResult rr = run_model(model, s, &sink);
    r.lengths.push_back(point_of("length", l, sink.finish(), rr.seconds));
    bar.update(++done, "length " + std::to_string(l));
  }
  bar.finish();
  changes_of(r.widths, r.changes);
  changes_of(r.lengths, r.changes);
  return r;
}

Json sweep_result_json(const SweepResult& r) {
  Json j = jobj();
  jput(j, "schema", jstr("ds4-parity-sweep"));
  jput(j, "version", jint(1));
  jput(j, "model", jstr(r.model));
  jput(j, "gates", jstr(r.gates));
  jput(j, "profile", jstr(r.profile));
  jput(j, "n_tokens", jint(r.n_tokens));
  jput(j, "prefix", jint(r.prefix));
  auto pts = [](const std::vector<SweepPoint>& v) {
    Json a = jarr();
    for (const SweepPoint& p : v) {
      Json o = jobj();
      jput(o, "value", jint(p.value));
      jput(o, "bit_equal", jbool(p.bit_equal));
      jput(o, "first_divergence", divpoint_json(p.first));
      jput(o, "token_fork", p.token_fork == kNoDivergence ? jnull() : jint(p.token_fork));
      jput(o, "logits_max_abs", jnum(p.logits_max_abs));
      jput(o, "kld_mean", jnum(p.kld_mean));
      jput(o, "argmax_flips", jint(p.flips));
      jput(o, "seconds", jnum(p.seconds));
      a.array.push_back(o);
    }
    return a;
  };
  jput(j, "widths", pts(r.widths));
  jput(j, "lengths", pts(r.lengths));
  Json ch = jarr();
  for (const SweepChange& c : r.changes) {
    Json o = jobj();
    jput(o, "axis", jstr(c.axis));
    jput(o, "from", jint(c.from));
    jput(o, "to", jint(c.to));
    jput(o, "what", jstr(c.what));
    ch.array.push_back(o);
  }
  jput(j, "changes", ch);
  return j;
}

std::string sweep_result_text(const SweepResult& r) {
  std::ostringstream o;
  o << "sweep: " << r.model << ", " << r.n_tokens << " tokens, gates " << r.gates << ", profile " << r.profile
    << "\n";
  auto table = [&](const std::vector<SweepPoint>& v, const char* head) {
    if (v.empty()) return;
    char line[256];
    std::snprintf(line, sizeof line, "  %6s  %-9s %-34s %10s %11s %6s\n", head, "bit-equal", "first divergence",
                  "token fork", "logit |d|", "flips");
    o << line;
    for (const SweepPoint& p : v) {
      const std::string first = p.first.found() ? std::to_string(p.first.pos) + " L" + std::to_string(p.first.layer) +
                                                      " " + p.first.tap
                                                : "never";
      std::snprintf(line, sizeof line, "  %6lld  %-9s %-34s %10s %11.3g %6lld\n", static_cast<long long>(p.value),
                    p.bit_equal ? "yes" : "no", first.c_str(),
                    p.token_fork == kNoDivergence ? "none" : std::to_string(p.token_fork).c_str(), p.logits_max_abs,
                    static_cast<long long>(p.flips));
      o << line;
    }
  };
  if (!r.widths.empty()) o << "verify width W (prefix " << r.prefix << " decoded with N=1):\n";
  table(r.widths, "W");
  if (!r.lengths.empty()) o << "prefill length L (one batched forward of the first L tokens):\n";
  table(r.lengths, "L");
  o << "thresholds:";
  if (r.changes.empty()) o << " none (every point behaves alike)";
  o << "\n";
  for (const SweepChange& c : r.changes)
    o << "  " << c.axis << " " << c.from << " -> " << c.to << ": " << c.what << "\n";
  return o.str();
}

}  // namespace ds4
