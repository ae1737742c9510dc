// Internal to the ablation matrix: the state-folder runner shared by ablate.cpp (plan, cells,
// shards, merge) and ablate_rank.cpp (ranking, minimal set, output).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ds4/ablate.h"

namespace ds4 {

CellAggregate aggregate(const std::vector<std::string>& names, const std::vector<RunDivergence>& runs);
Json cell_json(const CellResult& c, const std::string& plan_id);
CellResult cell_from_json(const Json& j);
// A cell for an arbitrary gate set (minimal-set verification, ddmin): id "set.<sha256 prefix>".
CellSpec set_cell(const GateSet& gates);

class Matrix {
 public:
  // Creates or reopens (validating) the plan in cfg.state_dir.
  explicit Matrix(const AblateConfig& cfg);
  // Reopens an existing state folder, taking every run setting from its plan.
  Matrix(const std::string& dir, const AblateConfig& cfg);

  void run_shard(int index, int count);
  // Runs a cell (or loads it when its file exists) and saves it at once.
  CellResult run_cell(const CellSpec& spec);
  // Matrix cells found in `dirs` (plan order; duplicates checked for equality).
  std::vector<CellResult> matrix_results(const std::vector<std::string>& dirs) const;
  // Collects the cells of `dirs`; with `rank`, ranks and computes the minimal set when complete.
  AblateResult finish(const std::vector<std::string>& dirs, bool rank);

  const std::vector<std::string>& gates() const { return gates_; }

 private:
  void init_from_plan();
  RunSpec spec_for(size_t prompt, const GateSet& gates) const;
  std::string ref_path(size_t prompt) const;
  std::string cell_path(const std::string& id) const;
  const Reference& reference(size_t prompt);
  std::vector<std::string> reference_manifests();
  std::optional<CellResult> load_cell(const std::string& id) const;
  void log_event(const std::string& what, const std::string& id);
  void log_recovered(const std::vector<const CellSpec*>& cells);
  void compute_minimal(AblateResult& r);

  AblateConfig cfg_;
  std::shared_ptr<const Model> model_;
  std::vector<std::string> gates_;
  Json plan_;
  std::string plan_id_;
  std::vector<std::string> prompt_names_;
  std::vector<std::vector<int32_t>> tokens_;
  std::vector<std::shared_ptr<const Reference>> refs_;
  // A verifier's N=1 prefix is the same in every cell (decode takes no gate): decoded once per
  // process and restored for the other cells when no compared position lies in it.
  std::shared_ptr<PrefixCache> prefix_cache_ = std::make_shared<PrefixCache>();
  std::vector<CellSpec> cells_;
  int64_t ran_ = 0, resumed_ = 0;
  double setup_seconds_ = 0;
};

}  // namespace ds4
