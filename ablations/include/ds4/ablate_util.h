// Small shared pieces of the differential debugger (ablate, bisect, sweep, report): JSON building
// and reading with non-finite numbers, atomic file writes, the stderr progress bar, the token
// sources (prompts, token files, teacher forcing) and the divergence point type.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ds4/engine.h"
#include "ds4/json.h"
#include "ds4/json_build.h"

namespace ds4 {

// ---- JSON --------------------------------------------------------------------------------------
// Builders and readers: ds4/json_build.h.
// Two-space indented text with a trailing newline (small files meant to be read by people).
std::string json_indented(const Json& v);
// Reads and parses a JSON file; throws "<path>: ...".
Json read_json_file(const std::string& path);

// ---- files -------------------------------------------------------------------------------------
// Writes `text` to `path` through "<path>.tmp.<pid>" and a rename, so `path` only ever holds a
// complete file (a process killed mid-write leaves at most a stray .tmp file, never a torn one).
void write_file_atomic(const std::string& path, const std::string& text);
std::string read_text_file(const std::string& path);
// A name safe as one path component: [A-Za-z0-9._-], anything else becomes '_'.
std::string safe_file_name(const std::string& s);

// ---- progress ----------------------------------------------------------------------------------
// "[#######.......] 12/28 cells  elapsed 0:05  eta 0:07  add_one_in.q8_gemm" on stderr: redrawn
// in place on a terminal, one line per step otherwise (CI logs stay readable).
class Progress {
 public:
  Progress(std::FILE* out, int64_t total, std::string unit, int64_t already_done = 0);
  // A step finished (done = steps finished so far, including those done before this process).
  void update(int64_t done, const std::string& note);
  void finish();

 private:
  std::FILE* out_;
  int64_t total_, base_;
  std::string unit_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};
std::string format_duration(double seconds);  // "0:05", "1:02:03"

// ---- token sources -----------------------------------------------------------------------------
// One input sequence of a prompt set: a user prompt rendered with the chat template, or a token
// file; `generate` greedy tokens of an exact plain decode are appended (teacher forcing, so every
// configuration sees the same tokens even where its argmax would flip).
struct PromptInput {
  std::string name;        // short id used in file names and reports
  std::string text;        // user prompt (when token_file is empty)
  std::string token_file;  // .i32 or text token file
};
// The built-in prompt set: a few short prompts.
std::vector<PromptInput> default_prompts();
// A prompt file: one user prompt per line; blank lines and lines starting with '#' are skipped;
// a line "@path" names a token file instead (relative to the prompt file's folder).
std::vector<PromptInput> read_prompt_file(const std::string& path);
std::vector<int32_t> prompt_tokens(const std::shared_ptr<const Model>& model, const PromptInput& p,
                                   Profile profile, int64_t generate);

// ---- divergence points -------------------------------------------------------------------------
inline constexpr int64_t kNoDivergence = -1;

// One (position, layer, tap) and what differs there. `only_ref` / `only_cand`: the row exists
// on one side only (a different op ran, e.g. the indexer where decode ran dense attention).
struct DivPoint {
  int64_t pos = kNoDivergence;
  int layer = 0;
  std::string tap;
  int tap_index = -1;  // index in the reference's dataflow order
  std::string variant_ref, variant_cand;
  uint64_t n_bitdiff = 0, n = 0;
  double max_abs = 0;
  int64_t channel = -1;
  double ref_value = 0, cand_value = 0;
  bool only_ref = false, only_cand = false;
  bool found() const { return pos != kNoDivergence; }
  bool same_place(const DivPoint& o) const {
    return pos == o.pos && layer == o.layer && tap == o.tap;
  }
  std::string where() const;  // "position 67, layer 2, tap 'q'" or "none"
};
Json divpoint_json(const DivPoint& p);  // null when not found
DivPoint divpoint_from_json(const Json& j);

// The gate whose fast or exact variant has this name (nullptr: not a gated kernel). `fast` tells
// which side of the gate it is.
const GateInfo* gate_of_variant(const std::string& variant, bool* fast);

// ---- delta debugging ---------------------------------------------------------------------------
// Zeller and Hildebrandt's ddmin: a 1-minimal subset of `items` for which `test` holds, given
// that test(items) holds (removing any single element of the result makes test fail). Each
// distinct subset is tested at most once.
std::vector<int> ddmin(const std::vector<int>& items,
                       const std::function<bool(const std::vector<int>&)>& test);

}  // namespace ds4
