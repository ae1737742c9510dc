// The ablation matrix: plan, cached references, resumable cells, shards and merge (see
// ds4/ablate.h). Ranking, the minimal set and the output tables are in ablate_rank.cpp.
#include "ds4/ablate.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "ablate_internal.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"

namespace fs = std::filesystem;

namespace ds4 {

std::vector<CellSpec> matrix_cells(const std::vector<std::string>& gates) {
  std::vector<CellSpec> cells;
  cells.push_back({"baseline", "baseline", "", GateSet::all_fast()});
  cells.push_back({"strict", "strict", "", GateSet::all_exact()});
  for (const std::string& g : gates) {
    GateSet only_fast = GateSet::all_exact();
    only_fast.set(gate_from_name(g), GateState::Fast);
    cells.push_back({"add_one_in." + g, "add_one_in", g, only_fast});
  }
  for (const std::string& g : gates) {
    GateSet only_exact = GateSet::all_fast();
    only_exact.set(gate_from_name(g), GateState::Exact);
    cells.push_back({"leave_one_out." + g, "leave_one_out", g, only_exact});
  }
  return cells;
}

const CellResult* AblateResult::cell(const std::string& id) const {
  for (const CellResult& c : cells)
    if (c.spec.id == id) return &c;
  for (const CellResult& c : extra)
    if (c.spec.id == id) return &c;
  return nullptr;
}

CellSpec set_cell(const GateSet& gates) {
  const std::string text = gates.to_string();
  return {"set." + sha256_hex(text.data(), text.size()).substr(0, 12), "set", "", gates};
}

// ---- aggregation -------------------------------------------------------------------------------

CellAggregate aggregate(const std::vector<std::string>& names, const std::vector<RunDivergence>& runs) {
  CellAggregate a;
  double kld_weighted = 0;
  int64_t positions = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunDivergence& d = runs[i];
    a.bit_equal &= d.bit_equal();
    if (d.first_bit.found() &&
        (!a.first_bit.found() || d.first_bit.pos < a.first_bit.pos ||
         (d.first_bit.pos == a.first_bit.pos && d.first_bit.tap_index < a.first_bit.tap_index))) {
      a.first_bit = d.first_bit;
      a.first_bit_prompt = names[i];
    }
    a.logits_max_abs = std::max(a.logits_max_abs, d.logits.max_abs);
    a.logits_max_ulp = std::max(a.logits_max_ulp, d.logits.max_ulp);
    a.max_ulp = std::max(a.max_ulp, d.max_ulp);
    a.kld_max = std::max(a.kld_max, d.logits.kld_max);
    kld_weighted += d.logits.kld_mean * static_cast<double>(d.logits.positions);
    positions += d.logits.positions;
    a.flips += d.logits.flips();
    a.structural_flips += d.logits.structural_flips;
    a.rows_bitdiff += d.rows_bitdiff;
    a.rows_unmatched += d.rows_unmatched;
    for (const std::string& v : d.variants)
      if (std::find(a.variants.begin(), a.variants.end(), v) == a.variants.end()) a.variants.push_back(v);
  }
  std::sort(a.variants.begin(), a.variants.end());
  a.kld_mean = positions ? kld_weighted / static_cast<double>(positions) : 0;
  return a;
}

Json cell_json(const CellResult& c, const std::string& plan_id) {
  Json j = jobj();
  jput(j, "schema", jstr("ds4-parity-ablate-cell"));
  jput(j, "version", jint(1));
  jput(j, "plan_id", jstr(plan_id));
  jput(j, "id", jstr(c.spec.id));
  jput(j, "kind", jstr(c.spec.kind));
  jput(j, "gate", c.spec.gate.empty() ? jnull() : jstr(c.spec.gate));
  jput(j, "gate_set", jstr(c.spec.gates.to_string()));
  jput(j, "seconds", jnum(c.seconds));
  jput(j, "pid", jint(c.pid));
  jput(j, "finished_utc", jstr(c.finished_utc));
  Json ps = jarr();
  for (size_t i = 0; i < c.prompts.size(); ++i) {
    Json p = run_divergence_json(c.prompts[i]);
    p.members.insert(p.members.begin(), {"prompt", jstr(c.prompt_names[i])});
    ps.array.push_back(p);
  }
  jput(j, "prompts", ps);
  return j;
}

CellResult cell_from_json(const Json& j) {
  CellResult c;
  c.spec.id = jstr_at(j, "id");
  c.spec.kind = jstr_at(j, "kind");
  c.spec.gate = jstr_at(j, "gate");
  c.spec.gates = GateSet::parse(jstr_at(j, "gate_set"));
  c.seconds = jnum_at(j, "seconds");
  c.pid = jint_at(j, "pid");
  c.finished_utc = jstr_at(j, "finished_utc");
  for (const Json& p : j.at("prompts").as_array()) {
    c.prompt_names.push_back(jstr_at(p, "prompt"));
    c.prompts.push_back(run_divergence_from_json(p));
  }
  c.agg = aggregate(c.prompt_names, c.prompts);
  return c;
}

// ---- the state folder --------------------------------------------------------------------------

namespace {

Json plan_request(const AblateConfig& cfg, const RunManifest& model_manifest,
                  const std::vector<std::string>& gates, const std::vector<PromptInput>& prompts) {
  Json r = jobj();
  jput(r, "model_path", jstr(fs::absolute(cfg.model_path).string()));
  if (!cfg.mtp_path.empty()) jput(r, "mtp_path", jstr(fs::absolute(cfg.mtp_path).string()));
  jput(r, "model_sha256", jstr(model_manifest.model_sha256));
  jput(r, "model_name", jstr(model_manifest.model_name));
  jput(r, "profile", jstr(profile_name(cfg.profile)));
  jput(r, "mode", jstr(run_mode_name(cfg.mode)));
  jput(r, "width", jint(cfg.width));
  jput(r, "prefix", jint(cfg.prefix));
  jput(r, "generate", jint(cfg.generate));
  jput(r, "backend", jstr(cfg.backend));
  jput(r, "gates", jstrs(gates));
  // Only when set, so the plan of an unfiltered matrix is what it was before the option existed.
  if (!cfg.capture.matches_all()) jput(r, "capture", jstr(cfg.capture.to_string()));
  jput(r, "tau", jnum(cfg.compare.tau));
  jput(r, "max_abs_threshold", jnum(cfg.compare.max_abs_threshold));
  Json ps = jarr();
  for (const PromptInput& p : prompts) {
    Json o = jobj();
    jput(o, "name", jstr(p.name));
    jput(o, "text", jstr(p.text));
    jput(o, "token_file", jstr(p.token_file));
    ps.array.push_back(o);
  }
  jput(r, "prompts", ps);
  return r;
}

// The first member that differs between two plan requests, for the refusal message.
std::string first_difference(const Json& a, const Json& b) {
  for (const auto& [k, v] : a.members) {
    const Json* w = b.find(k);
    if (!w || w->dump() != v.dump()) return k;
  }
  for (const auto& [k, v] : b.members)
    if (!a.find(k)) return k;
  return "";
}

std::string now_utc() { return utc_timestamp(); }

}  // namespace

Matrix::Matrix(const AblateConfig& cfg) : cfg_(cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  if (cfg_.state_dir.empty()) fail("ablate: no state folder");
  // Every run of the matrix (the plain reference and each cell) runs on this backend: on cuda
  // the reference is N=1 decode on the GPU, so a cell is compared with the same device's decode.
  if (backend_from_name(cfg_.backend) == Backend::Cuda) {
    const CudaDeviceInfo dev = cuda_device_info();
    if (!dev.available) fail("ablate --backend cuda: " + dev.why_unavailable);
  }
  gates_ = cfg_.gates;
  if (gates_.empty())
    for (const GateInfo& g : all_gates())
      if (g.on_backend(cfg_.backend)) gates_.push_back(g.id);
  for (const std::string& g : gates_) {
    if (!gate_info(gate_from_name(g)).on_backend(cfg_.backend))
      fail("ablate: gate '" + g + "' has no " + cfg_.backend + " fast variant (backends: " +
           gate_info(gate_from_name(g)).backends + ")");
  }
  std::vector<PromptInput> prompts = cfg_.prompts.empty() ? default_prompts() : cfg_.prompts;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (size_t k = 0; k < i; ++k)
      if (prompts[i].name == prompts[k].name) fail("ablate: two prompts are named '" + prompts[i].name + "'");
  model_ = Model::load(cfg_.model_path, cfg_.mtp_path);
  RunSpec probe;
  probe.profile = cfg_.profile;
  const RunManifest mm = make_manifest(*model_, probe, "");
  const Json request = plan_request(cfg_, mm, gates_, prompts);

  fs::create_directories(fs::path(cfg_.state_dir) / "refs");
  fs::create_directories(fs::path(cfg_.state_dir) / "cells");
  const std::string plan_path = (fs::path(cfg_.state_dir) / "plan.json").string();
  if (fs::exists(plan_path)) {
    plan_ = read_json_file(plan_path);
    const std::string diff = first_difference(plan_.at("request"), request);
    if (!diff.empty())
      fail(cfg_.state_dir + " holds another matrix (setting '" + diff +
           "' differs); use another --state folder or remove this one");
  } else {
    plan_ = jobj();
    jput(plan_, "schema", jstr("ds4-parity-ablate-plan"));
    jput(plan_, "version", jint(1));
    jput(plan_, "request", request);
    Json toks = jarr();
    for (const PromptInput& p : prompts) {
      std::vector<int32_t> t = prompt_tokens(model_, p, cfg_.profile, cfg_.generate);
      toks.array.push_back(jints(std::vector<int64_t>(t.begin(), t.end())));
    }
    jput(plan_, "tokens", toks);
    Json cells = jarr();
    for (const CellSpec& c : matrix_cells(gates_)) cells.array.push_back(jstr(c.id));
    jput(plan_, "cells", cells);
    const std::string body = plan_.dump();
    jput(plan_, "plan_id", jstr(sha256_hex(body.data(), body.size())));
    // Concurrent shards may race here: both write the same bytes, and rename is atomic.
    write_file_atomic(plan_path, json_indented(plan_));
  }
  init_from_plan();
  setup_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Matrix::Matrix(const std::string& dir, const AblateConfig& cfg) : cfg_(cfg) {
  const std::string plan_path = (fs::path(dir) / "plan.json").string();
  if (!fs::exists(plan_path)) fail(dir + ": no plan.json (not an ablation state folder)");
  plan_ = read_json_file(plan_path);
  const Json& r = plan_.at("request");
  cfg_.state_dir = dir;
  cfg_.model_path = jstr_at(r, "model_path");
  cfg_.profile = profile_from_name(jstr_at(r, "profile"));
  cfg_.mode = run_mode_from_name(jstr_at(r, "mode"));
  cfg_.width = jint_at(r, "width");
  cfg_.prefix = jint_at(r, "prefix");
  cfg_.generate = jint_at(r, "generate");
  cfg_.backend = jstr_at(r, "backend");
  cfg_.compare.tau = jnum_at(r, "tau", 1e-3);
  cfg_.compare.max_abs_threshold = jnum_at(r, "max_abs_threshold", 1e-3);
  for (const Json& g : r.at("gates").as_array()) gates_.push_back(g.as_string());
  if (!fs::exists(cfg_.model_path)) fail(dir + ": the plan's model " + cfg_.model_path + " is missing");
  // Plans written before --mtp have no mtp_path: no sidecar.
  if (const Json* mtp = r.find("mtp_path")) cfg_.mtp_path = mtp->as_string();
  if (!cfg_.mtp_path.empty() && !fs::exists(cfg_.mtp_path))
    fail(dir + ": the plan's MTP sidecar " + cfg_.mtp_path + " is missing");
  model_ = Model::load(cfg_.model_path, cfg_.mtp_path);
  init_from_plan();
}

void Matrix::init_from_plan() {
  plan_id_ = jstr_at(plan_, "plan_id");
  const Json& r = plan_.at("request");
  const auto& prompts = r.at("prompts").as_array();
  const auto& toks = plan_.at("tokens").as_array();
  if (prompts.size() != toks.size()) fail(cfg_.state_dir + "/plan.json: prompts and tokens differ in count");
  for (size_t i = 0; i < prompts.size(); ++i) {
    prompt_names_.push_back(jstr_at(prompts[i], "name"));
    std::vector<int32_t> t;
    for (const Json& x : toks[i].as_array()) t.push_back(static_cast<int32_t>(x.as_int()));
    tokens_.push_back(std::move(t));
  }
  cells_ = matrix_cells(gates_);
}

RunSpec Matrix::spec_for(size_t prompt, const GateSet& gates) const {
  RunSpec s;
  s.backend = backend_from_name(cfg_.backend);
  s.profile = cfg_.profile;
  s.gates = gates;
  s.threads = cfg_.threads;
  s.mode = cfg_.mode;
  s.width = cfg_.width;
  s.tokens = tokens_[prompt];
  if (s.mode == RunMode::Verify) {
    // Default prefix: the tokens before the teacher-forced continuation (the prompt itself).
    const int64_t gen = cfg_.generate;
    s.prefix = cfg_.prefix > 0 ? cfg_.prefix
                               : std::max<int64_t>(1, static_cast<int64_t>(s.tokens.size()) - gen);
    if (s.width == 0) s.width = 4;
    if (prefix_unobserved(s, cfg_.capture)) s.prefix_cache = prefix_cache_;
  }
  return s;
}

std::string Matrix::ref_path(size_t prompt) const {
  return (fs::path(cfg_.state_dir) / "refs" / (safe_file_name(prompt_names_[prompt]) + ".h5")).string();
}

std::string Matrix::cell_path(const std::string& id) const {
  return (fs::path(cfg_.state_dir) / "cells" / (safe_file_name(id) + ".json")).string();
}

const Reference& Matrix::reference(size_t prompt) {
  if (refs_.size() < tokens_.size()) refs_.resize(tokens_.size());
  if (refs_[prompt]) return *refs_[prompt];
  const std::string path = ref_path(prompt);
  if (!fs::exists(path)) {
    // The plain reference: N=1 decode of every token, every tap at level full, cached on disk.
    RunSpec plain;
    plain.backend = backend_from_name(cfg_.backend);
    plain.profile = cfg_.profile;
    plain.threads = cfg_.threads;
    plain.tokens = tokens_[prompt];
    RunManifest m = make_manifest(*model_, plain, cfg_.command_line);
    m.extra["ablate.prompt"] = prompt_names_[prompt];
    m.extra["ablate.plan_id"] = plan_id_;
    DumpWriter w(path, m, TapLevel::Full, cfg_.capture);
    run_model(model_, plain, &w);
    w.finish();
  }
  auto ref = Reference::load(path);
  if (ref->tokens() != tokens_[prompt] || ref->manifest().model_sha256 != jstr_at(plan_.at("request"), "model_sha256"))
    fail(path + ": reference does not match the plan (tokens or model); remove it to recompute");
  refs_[prompt] = ref;
  return *ref;
}

std::vector<std::string> Matrix::reference_manifests() {
  std::vector<std::string> out;
  for (size_t i = 0; i < tokens_.size(); ++i) out.push_back(reference(i).manifest().to_text());
  return out;
}

void Matrix::log_event(const std::string& what, const std::string& id) {
  std::ofstream f(fs::path(cfg_.state_dir) / "events.log", std::ios::app);
  f << now_utc() << " pid " << ::getpid() << " " << what << " " << id << "\n";
}

std::optional<CellResult> Matrix::load_cell(const std::string& id) const {
  const std::string path = cell_path(id);
  if (!fs::exists(path)) return std::nullopt;
  const Json j = read_json_file(path);
  if (jstr_at(j, "plan_id") != plan_id_)
    fail(path + ": cell of another plan (plan_id differs); remove it");
  return cell_from_json(j);
}

CellResult Matrix::run_cell(const CellSpec& spec) {
  if (auto c = load_cell(spec.id)) return *c;
  log_event("start", spec.id);
  CellResult c;
  c.spec = spec;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    std::shared_ptr<const Reference> ref;
    reference(i);
    ref = refs_[i];
    CompareSink sink(ref, cfg_.compare);
    const RunResult rr = run_model(model_, spec_for(i, spec.gates), &sink);
    RunDivergence d = sink.finish();
    d.seconds = rr.seconds;
    c.prompt_names.push_back(prompt_names_[i]);
    c.prompts.push_back(std::move(d));
  }
  c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  c.pid = ::getpid();
  c.finished_utc = now_utc();
  c.agg = aggregate(c.prompt_names, c.prompts);
  write_file_atomic(cell_path(spec.id), cell_json(c, plan_id_).dump() + "\n");
  log_event("saved", spec.id);
  ++ran_;
  if (cfg_.on_cell_saved) cfg_.on_cell_saved(spec.id);
  return c;
}

// A killed run may have saved a cell's file and died before its "saved" line: name those cells
// "recovered", so the log accounts for every saved cell exactly once.
void Matrix::log_recovered(const std::vector<const CellSpec*>& cells) {
  std::set<std::string> logged;
  std::ifstream f(fs::path(cfg_.state_dir) / "events.log");
  for (std::string line; std::getline(f, line);) {
    for (const char* word : {" saved ", " recovered "}) {
      const size_t at = line.find(word);
      if (at != std::string::npos) logged.insert(line.substr(at + std::strlen(word)));
    }
  }
  for (const CellSpec* c : cells)
    if (!logged.count(c->id) && fs::exists(cell_path(c->id))) log_event("recovered", c->id);
}

void Matrix::run_shard(int index, int count) {
  std::vector<const CellSpec*> mine;
  for (size_t i = 0; i < cells_.size(); ++i)
    if (static_cast<int>(i % static_cast<size_t>(count)) == index) mine.push_back(&cells_[i]);
  int64_t done = 0;
  for (const CellSpec* c : mine) done += fs::exists(cell_path(c->id));
  resumed_ = done;
  if (done > 0) log_recovered(mine);
  // References first (cached), so the progress bar measures cells only.
  if (done < static_cast<int64_t>(mine.size()))
    for (size_t i = 0; i < tokens_.size(); ++i) reference(i);
  Progress bar(cfg_.progress, static_cast<int64_t>(mine.size()), "cells", done);
  if (done > 0 && cfg_.progress)
    std::fprintf(cfg_.progress, "resuming: %lld of %zu cells already saved in %s\n",
                 static_cast<long long>(done), mine.size(), cfg_.state_dir.c_str());
  for (const CellSpec* c : mine) {
    if (fs::exists(cell_path(c->id))) continue;
    run_cell(*c);
    bar.update(++done, c->id);
  }
  bar.finish();
}

std::vector<CellResult> Matrix::matrix_results(const std::vector<std::string>& dirs) const {
  std::vector<CellResult> out;
  for (const CellSpec& spec : cells_) {
    std::optional<CellResult> found;
    for (const std::string& d : dirs) {
      const std::string path = (fs::path(d) / "cells" / (safe_file_name(spec.id) + ".json")).string();
      if (!fs::exists(path)) continue;
      const Json j = read_json_file(path);
      if (jstr_at(j, "plan_id") != plan_id_) fail(path + ": cell of another plan (plan_id differs)");
      CellResult c = cell_from_json(j);
      if (found) {
        // The same cell run twice (by two shards): the results must agree.
        Json a = jobj(), b = jobj();
        for (size_t i = 0; i < c.prompts.size(); ++i) {
          a.array.push_back(run_divergence_json(found->prompts[i], false));
          b.array.push_back(run_divergence_json(c.prompts[i], false));
        }
        auto strip = [](Json& x) {
          for (Json& p : x.array)
            p.members.erase(std::remove_if(p.members.begin(), p.members.end(),
                                           [](const auto& m) { return m.first == "seconds"; }),
                            p.members.end());
        };
        strip(a);
        strip(b);
        if (a.dump() != b.dump())
          fail("cell " + spec.id + " differs between two folders (" + path +
               "): the configuration is not deterministic");
        continue;
      }
      found = std::move(c);
    }
    if (found) out.push_back(std::move(*found));
  }
  return out;
}

// ---- entry points ------------------------------------------------------------------------------

AblateResult run_ablation(const AblateConfig& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  if (cfg.shard_count < 1 || cfg.shard_index < 0 || cfg.shard_index >= cfg.shard_count)
    fail("bad shard " + std::to_string(cfg.shard_index) + "/" + std::to_string(cfg.shard_count));
  Matrix m(cfg);
  m.run_shard(cfg.shard_index, cfg.shard_count);
  AblateResult r = m.finish({cfg.state_dir}, cfg.shard_count == 1);
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

AblateResult merge_ablation(const std::vector<std::string>& dirs, const AblateConfig& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  if (dirs.empty()) fail("ablate --merge: no state folder given");
  std::string id;
  for (const std::string& d : dirs) {
    const std::string p = (fs::path(d) / "plan.json").string();
    if (!fs::exists(p)) fail(d + ": no plan.json (not an ablation state folder)");
    const std::string pid = jstr_at(read_json_file(p), "plan_id");
    if (!id.empty() && pid != id) fail(d + ": holds another plan than " + dirs[0] + " (plan_id differs)");
    id = pid;
  }
  Matrix m(dirs[0], cfg);
  AblateResult r = m.finish(dirs, true);
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace ds4
