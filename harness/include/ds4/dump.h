// Tap dumps: HDF5 files holding the tapped intermediate tensors of one run, indexed by
// (layer, tap name, absolute position) so that a plain (N=1) run and a batched run align by
// construction, plus the run manifest as root attributes. The layout is dumps/SCHEMA.md
// (schema_version 1); readers refuse every other version.
//
//   DumpWriter  a TapSink: collects taps (stats in memory; data at level full in an unlinked
//               scratch file beside the dump, so memory holds only the row index), then
//               finish() writes <path>.tmp.<pid> and renames it to <path>, so the final name
//               only ever holds a complete file.
//   DumpReader  opens and validates a dump; random access by key and a streaming for_each_row()
//               that holds one tap (at most ~64 MiB of data) at a time, so two large dumps can be
//               compared in bounded memory.
// Every failure is a one-line ds4::Error that starts with the file path; HDF5's own error
// printing is switched off.
#pragma once
#include <compare>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ds4/engine.h"
#include "ds4/taps.h"

namespace ds4 {

inline constexpr int kDumpSchemaVersion = 1;

// What was run, stored as the dump's root attributes (one attribute per field; tokens as the
// root dataset /tokens; extra[k] as the attribute "extra.<k>").
struct RunManifest {
  int schema_version = kDumpSchemaVersion;
  std::string engine_version, engine_git_sha, model_path, model_sha256, model_name, backend,
      device_name;
  int sm_count = 0;
  std::string cuda_version, cublas_version, profile, gate_set, run_mode;
  int64_t width = 0;  // forward width W of the run (1 for plain)
  std::vector<int32_t> tokens;
  uint64_t seed = 0;
  std::string tap_level, tap_filter, created_utc, command_line;
  std::map<std::string, std::string> extra;

  // "key: value" lines in declaration order, then "extra.<k>: v" sorted by key; tokens as
  // "tokens: [n] t0,t1,...". Stable: the same manifest always prints the same text.
  std::string to_text() const;
  bool operator==(const RunManifest&) const = default;
};

// A tap as stored: the layer (-1 = output head, n_layer = MTP block) and the §12 name.
struct TapKey {
  int layer = 0;
  std::string name;
  auto operator<=>(const TapKey&) const = default;
};
// "layer 3 'q'" / "layer -1 'result_output'": how messages name a tap.
std::string tap_key_text(int layer, const std::string& name);
// The HDF5 group of a layer: "layer_-1" for the head, "layer_000".."layer_999" otherwise.
std::string dump_layer_group(int layer);

// Lower-case hex SHA-256 of a file's bytes (streams it; throws "<path>: cannot read ...").
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t n);
// Current UTC time as "2025-01-31T12:34:56Z".
std::string utc_timestamp();

class DumpWriter : public TapSink {
 public:
  // Nothing is written before finish(). The manifest's tap_level and tap_filter fields are
  // overwritten with `level` and `filter`, and created_utc is set when empty.
  DumpWriter(std::string path, RunManifest manifest, TapLevel level, TapFilter filter = {});
  // Without finish(), removes any temporary file and leaves nothing under `path`.
  ~DumpWriter() override;
  DumpWriter(const DumpWriter&) = delete;
  DumpWriter& operator=(const DumpWriter&) = delete;

  // TapSink: thread-safe; level off or a filtered-out tap costs a compare and nothing else.
  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
           const char* variant) override;
  void begin_forward(int64_t first_pos, int64_t n_rows) override;

  // Drops every captured row at positions >= pos (a speculative verifier that restores a
  // snapshot and re-runs from pos calls this first; otherwise finish() reports the position as
  // written twice).
  void rollback(int64_t pos) override;

  // Replaces the manifest's token sequence before finish(): a run that generates (a verifier
  // with MTP drafts) knows its tokens only at the end, and the dump must name what it consumed.
  void set_tokens(std::vector<int32_t> tokens);

  // Writes the file (atomically: tmp name, then rename). Throws a one-line ds4::Error naming
  // the path; a failed finish leaves no file behind. May be called once.
  void finish();

  const std::string& path() const;
  const RunManifest& manifest() const;
  size_t rows() const;        // captured (tap, position) rows
  size_t data_bytes() const;  // bytes of float data captured so far (0 at level stats)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Every dump starts with a 512-byte DS4 header (an HDF5 user block: h5py and h5dump skip it)
// holding the file length and a checksum, which DumpReader checks before libhdf5 parses the file
// (dumps/SCHEMA.md, "File envelope"). A tool that edits a dump in place with the HDF5 API must
// reseal it afterwards; a file made with the HDF5 API needs a 512-byte user block
// (H5Pset_userblock) to be sealable. Throws ds4::Error naming the file.
void reseal_dump(const std::string& path);

// One stored row, as handed to DumpReader::for_each_row. `data` is empty when the dump is
// stats-only (has_data false) and only valid during the callback.
struct DumpRow {
  int64_t pos = 0;
  std::span<const float> data;
  bool has_data = false;
  size_t length = 0;  // element count of the tensor (also known in stats-only dumps)
  TensorStats stats;
  std::string_view variant;
};

class DumpReader {
 public:
  // Opens and validates the file. Refuses, with one-line messages starting with `path`:
  //   a missing, non-HDF5, truncated or unreadable file ("not a readable HDF5 dump (...)"),
  //   a missing or unsupported schema_version (with the command that regenerates the file),
  //   a missing required root attribute or dataset (naming it).
  static DumpReader open(const std::string& path);
  DumpReader(DumpReader&&) noexcept;
  DumpReader& operator=(DumpReader&&) noexcept;
  ~DumpReader();

  const std::string& path() const;
  const RunManifest& manifest() const;
  TapLevel level() const;
  bool has_data() const { return level() == TapLevel::Full; }
  // Every stored tap in dataflow order (the order of first appearance within a row).
  const std::vector<TapKey>& taps() const;
  bool has_tap(int layer, const std::string& name) const;
  // The forward() calls of the run: (first_pos, n_rows) in call order.
  const std::vector<std::pair<int64_t, int64_t>>& forwards() const;

  // Per-key access; each throws a one-line error naming the path and the key when the tap or
  // position is absent (and row() when the dump is stats-only).
  std::vector<int64_t> positions(int layer, const std::string& name) const;  // ascending
  std::vector<float> row(int layer, const std::string& name, int64_t pos) const;
  TensorStats stats(int layer, const std::string& name, int64_t pos) const;
  std::string variant(int layer, const std::string& name, int64_t pos) const;

  // Streams one tap's rows in ascending position order, reading its data in blocks of at most
  // ~64 MiB, so memory stays bounded by one block plus the tap's index.
  void for_each_row(int layer, const std::string& name,
                    const std::function<void(const DumpRow&)>& fn) const;

 private:
  struct Impl;
  explicit DumpReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4
