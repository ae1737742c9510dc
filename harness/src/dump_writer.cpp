// DumpWriter: collects taps during a run, then writes one HDF5 file (dumps/SCHEMA.md)
// atomically. Rows are kept per (layer, name) in arrival order and sorted by position only when
// written, so plain (position-major) and batched (layer-major) runs produce the same layout.
// At level full the row data waits in an unlinked scratch file beside the dump (ScratchFile),
// not in memory: a long context's full dump is larger than RAM; memory holds the per-row index.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <type_traits>
#include <unordered_map>

#include "ds4/dump.h"
#include "ds4/error.h"
#include "ds4/scratch_file.h"
#include "dump_hdf5.h"
#include "dump_schema.h"
#include "dump_seal.h"

namespace ds4 {

namespace {

// The rows of one tap, in arrival order. Shapes: pos, len, variant, stats [R]; spill [R] (level
// full only: where the row's floats sit in the scratch file).
struct TapRows {
  int layer = 0;
  std::string name;
  std::vector<int64_t> pos;
  std::vector<uint64_t> len;
  std::vector<uint64_t> spill;
  std::vector<uint32_t> variant;  // index into Impl::variants
  std::vector<TensorStats> stats;
};

// Row data is written to HDF5 in pieces of this many floats (16 MiB), or one row if longer.
constexpr size_t kPieceFloats = size_t{4} << 20;

}  // namespace

struct DumpWriter::Impl {
  std::string path;
  RunManifest manifest;
  TapLevel level;
  TapFilter filter;
  bool filter_all = true;

  std::mutex mu;
  std::vector<TapRows> taps;
  std::map<std::pair<int, std::string>, int> index;  // (layer, name) -> taps[]
  // Dataflow order of tap ids. A tap first seen at a row is inserted right after the tap that
  // preceded it in the same row (taps of one row arrive in dataflow order), so taps that fire
  // only at some positions (compressor rows every 4th position, lid_top_k once enough rows are
  // visible) still land in their place, in plain and batched runs alike.
  std::vector<int> order;
  std::unordered_map<int64_t, int> last_at_pos;  // position -> id of its latest tap
  std::vector<std::string> variants;
  std::unordered_map<std::string, uint32_t> variant_index;
  uint32_t last_variant = UINT32_MAX;
  std::vector<std::pair<int64_t, int64_t>> forwards;
  size_t rows = 0, data_bytes = 0;
  std::string error;  // first problem seen during capture, reported by finish()
  bool finished = false;
  std::string tmp;  // set while a temporary file may exist
  ScratchFile spill;  // level full: the row data

  int tap_id(int layer, const char* name, int64_t pos);
  uint32_t variant_id(const char* variant);
  void write_file(const std::string& file_path);
  void write_tap(const h5::Context& c, hid_t file, std::set<int>& layer_groups, TapRows& t);
  std::vector<float> piece;  // write_tap's buffer (kPieceFloats)
};

int DumpWriter::Impl::tap_id(int layer, const char* name, int64_t pos) {
  auto [it, added] = index.try_emplace({layer, name}, static_cast<int>(taps.size()));
  const int id = it->second;
  if (added) {
    TapRows t;
    t.layer = layer;
    t.name = name;
    if (error.empty() && (t.name.empty() || t.name.find('/') != std::string::npos ||
                          t.name == "." || t.name == ".."))
      error = path + ": tap name '" + t.name + "' (layer " + std::to_string(layer) +
              ") cannot be an HDF5 group name";
    taps.push_back(std::move(t));
    auto prev = last_at_pos.find(pos);
    auto at = order.begin();
    if (prev != last_at_pos.end()) at = std::find(order.begin(), order.end(), prev->second) + 1;
    order.insert(at, id);
  }
  last_at_pos[pos] = id;
  return id;
}

uint32_t DumpWriter::Impl::variant_id(const char* variant) {
  if (!variant) variant = "";
  // Consecutive taps usually share a variant: skip the hash lookup then.
  if (last_variant != UINT32_MAX && variants[last_variant] == variant) return last_variant;
  auto [it, added] = variant_index.try_emplace(variant, static_cast<uint32_t>(variants.size()));
  if (added) variants.emplace_back(variant);
  return last_variant = it->second;
}

DumpWriter::DumpWriter(std::string path, RunManifest manifest, TapLevel level, TapFilter filter)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  // Fail before the run, not after it: a missing or unwritable output folder is found here,
  // before any forward pass is spent on a dump that cannot be written.
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(impl_->path).parent_path();
  const std::string folder = parent.empty() ? "." : parent.string();
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    fail(impl_->path + ": cannot write dump: folder '" + folder + "' does not exist");
  if (::access(folder.c_str(), W_OK) != 0)
    fail(impl_->path + ": cannot write dump: folder '" + folder + "' is not writable");
  impl_->manifest = std::move(manifest);
  impl_->manifest.schema_version = kDumpSchemaVersion;
  impl_->manifest.tap_level = tap_level_name(level);
  impl_->manifest.tap_filter = filter.to_string();
  if (impl_->manifest.created_utc.empty()) impl_->manifest.created_utc = utc_timestamp();
  impl_->level = level;
  impl_->filter_all = filter.matches_all();
  impl_->filter = std::move(filter);
  std::string why;
  if (level == TapLevel::Full && !impl_->spill.open(folder, &why))
    fail(impl_->path + ": cannot write dump: scratch file in '" + folder + "' (" + why + ")");
}

DumpWriter::~DumpWriter() {
  if (impl_ && !impl_->tmp.empty()) std::remove(impl_->tmp.c_str());
}

const std::string& DumpWriter::path() const { return impl_->path; }
const RunManifest& DumpWriter::manifest() const { return impl_->manifest; }
void DumpWriter::set_tokens(std::vector<int32_t> tokens) { impl_->manifest.tokens = std::move(tokens); }
size_t DumpWriter::rows() const { return impl_->rows; }
size_t DumpWriter::data_bytes() const { return impl_->data_bytes; }

void DumpWriter::tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
                     const char* variant) {
  Impl& m = *impl_;
  if (m.level == TapLevel::Off) return;
  if (!m.filter_all && !m.filter.matches(layer, name, pos)) return;
  const TensorStats st = compute_stats(data, n);  // outside the lock: the costly part
  std::lock_guard lock(m.mu);
  if (m.finished) return;
  TapRows& t = m.taps[m.tap_id(layer, name, pos)];
  if (m.level == TapLevel::Full) {
    uint64_t at = 0;
    std::string why;
    if (!m.spill.append(data, n * sizeof(float), &at, &why)) {
      // Reported by finish(), which then writes nothing: the run itself goes on.
      if (m.error.empty()) m.error = m.path + ": cannot write dump: scratch file (" + why + ")";
      return;
    }
    t.spill.push_back(at);
    m.data_bytes += n * sizeof(float);
  }
  t.pos.push_back(pos);
  t.len.push_back(n);
  t.variant.push_back(m.variant_id(variant));
  t.stats.push_back(st);
  ++m.rows;
}

void DumpWriter::begin_forward(int64_t first_pos, int64_t n_rows) {
  std::lock_guard lock(impl_->mu);
  impl_->forwards.emplace_back(first_pos, n_rows);
  // Row streams restart with this call: a position's previous tap no longer precedes anything.
  impl_->last_at_pos.clear();
}

void DumpWriter::rollback(int64_t pos) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  m.rows = 0;
  m.data_bytes = 0;
  const bool full = m.level == TapLevel::Full;
  for (TapRows& t : m.taps) {
    // Rows at or after `pos` leave the index; their bytes stay unused in the scratch file.
    size_t k = 0;
    for (size_t i = 0; i < t.pos.size(); ++i) {
      if (t.pos[i] >= pos) continue;
      t.pos[k] = t.pos[i];
      t.len[k] = t.len[i];
      t.variant[k] = t.variant[i];
      t.stats[k] = t.stats[i];
      if (full) t.spill[k] = t.spill[i];
      ++k;
      if (full) m.data_bytes += t.len[i] * sizeof(float);
    }
    t.pos.resize(k);
    t.len.resize(k);
    t.variant.resize(k);
    t.stats.resize(k);
    if (full) t.spill.resize(k);
    m.rows += k;
  }
  m.last_at_pos.clear();
}

void DumpWriter::finish() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.finished) fail(m.path + ": DumpWriter::finish() called twice");
  m.finished = true;
  if (!m.error.empty()) fail(m.error);
  // A position captured twice would make the file ambiguous; name the first one.
  for (int id : m.order) {
    const TapRows& t = m.taps[id];
    std::vector<int64_t> p = t.pos;
    std::sort(p.begin(), p.end());
    auto dup = std::adjacent_find(p.begin(), p.end());
    if (dup != p.end())
      fail(m.path + ": " + tap_key_text(t.layer, t.name) + " position " + std::to_string(*dup) +
           " was captured twice (call DumpWriter::rollback before re-running positions)");
  }
  m.tmp = m.path + ".tmp." + std::to_string(::getpid());
  try {
      m.write_file(m.tmp);
      seal_dump(m.tmp);  // after the HDF5 file is closed: the checksum covers its final bytes
  } catch (...) {
    std::remove(m.tmp.c_str());
    m.tmp.clear();
    throw;
  }
  if (std::rename(m.tmp.c_str(), m.path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(m.tmp.c_str());
    m.tmp.clear();
    fail(m.path + ": cannot rename the finished dump into place (" + why + ")");
  }
  m.tmp.clear();
}

// ---------------------------------------------------------------------------------------------
// File layout (dumps/SCHEMA.md)
// ---------------------------------------------------------------------------------------------

void DumpWriter::Impl::write_file(const std::string& file_path) {
  namespace s = dump_schema;
  h5::quiet();
  const h5::Context c{path + ": cannot write dump"};
  if (level == TapLevel::Full) piece.resize(kPieceFloats);
  // The first kDumpSealBytes are an HDF5 user block, filled with the seal (dump_seal.h).
  h5::Handle fcpl(c.check(H5Pcreate(H5P_FILE_CREATE), "file creation properties"));
  c.check(H5Pset_userblock(fcpl.get(), kDumpSealBytes), "reserve the DS4 header");
  h5::Handle file(c.check(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT),
                          "create " + file_path));
  const hid_t root = file.get();
  // hardening (disk full): a failed H5Fclose in libhdf5 1.10 leaves a dangling file ID that
  // crashes the process in the library's exit-time cleanup (H5close, which libhdf5_cpp runs from
  // a static destructor even after H5dont_atexit). So every write, the final flush included,
  // happens inside this try; on failure the temporary is truncated to zero first, which returns
  // its blocks, and only then does the handle's close flush HDF5's metadata.
  try {

  s::for_each_manifest_field(manifest, [&](const char* name, const auto& v) {
    using T = std::decay_t<decltype(v)>;
    if constexpr (std::is_same_v<T, std::vector<int32_t>>) {
      h5::write_dataset(c, root, name, H5T_STD_I32LE, H5T_NATIVE_INT32, v.data(), v.size());
    } else if constexpr (std::is_same_v<T, int>) {
      h5::write_attr(c, root, name, static_cast<int32_t>(v));
    } else {
      h5::write_attr(c, root, name, v);
    }
  });
  for (const auto& [k, v] : manifest.extra)
    h5::write_attr(c, root, (std::string(s::kExtraPrefix) + k).c_str(), v);
  h5::write_attr(c, root, s::kDataDtype, std::string("float32"));
  h5::write_attr(c, root, s::kTapNaming, std::string(s::kTapNamingValue));

  std::vector<int64_t> fw;
  for (const auto& [first, n] : forwards) fw.insert(fw.end(), {first, n});
  h5::write_dataset(c, root, s::kForwards, H5T_STD_I64LE, H5T_NATIVE_INT64, fw.data(), fw.size(),
                    2);

  // Taps emptied by rollback() are left out of the file and of the order.
  std::vector<int32_t> order_layer;
  std::vector<const char*> order_name;
  std::set<int> layer_groups;
  for (int id : order) {
    TapRows& t = taps[id];
    if (t.pos.empty()) continue;
    order_layer.push_back(t.layer);
    order_name.push_back(t.name.c_str());
    write_tap(c, root, layer_groups, t);
  }
  h5::write_dataset(c, root, s::kOrderLayer, H5T_STD_I32LE, H5T_NATIVE_INT32, order_layer.data(),
                    order_layer.size());
  h5::write_strings(c, root, s::kOrderName, order_name);
  if (H5Fflush(root, H5F_SCOPE_LOCAL) < 0) c.fail("flush " + file_path);
  } catch (...) {
    if (::truncate(file_path.c_str(), 0) != 0) {
      // Nothing more to free; the close below may still fail.
    }
    throw;
  }

  if (file.close() < 0) c.fail("close " + file_path);
  // Make the bytes durable before the rename publishes them under the final name.
  const int fd = ::open(file_path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void DumpWriter::Impl::write_tap(const h5::Context& c, hid_t file, std::set<int>& layer_groups,
                                 TapRows& t) {
  namespace s = dump_schema;
  const std::string lg = dump_layer_group(t.layer);
  if (layer_groups.insert(t.layer).second) {
    h5::Handle g(c.check(H5Gcreate2(file, lg.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                         "create group " + lg));
    h5::write_attr(c, g.get(), s::kLayer, static_cast<int32_t>(t.layer));
  }
  const std::string gname = lg + "/" + t.name;
  h5::Handle g(c.check(H5Gcreate2(file, gname.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                       "create group " + gname));
  const hid_t loc = g.get();

  // Rows sorted by position (arrival order is usually ascending already).
  const size_t P = t.pos.size();
  std::vector<size_t> perm(P);
  std::iota(perm.begin(), perm.end(), size_t{0});
  std::stable_sort(perm.begin(), perm.end(),
                   [&](size_t a, size_t b) { return t.pos[a] < t.pos[b]; });

  std::vector<int64_t> pos(P), off(P + 1, 0);
  std::vector<double> absmax(P), mean(P);
  std::vector<uint64_t> nan(P), inf(P), hash(P);
  std::vector<const char*> variant(P);
  int64_t row_length = P ? int64_t(t.len[0]) : -1;
  for (size_t k = 0; k < P; ++k) {
    const size_t i = perm[k];
    pos[k] = t.pos[i];
    off[k + 1] = off[k] + int64_t(t.len[i]);
    if (int64_t(t.len[i]) != row_length) row_length = -1;
    absmax[k] = t.stats[i].absmax;
    mean[k] = t.stats[i].mean;
    nan[k] = t.stats[i].nan_count;
    inf[k] = t.stats[i].inf_count;
    hash[k] = t.stats[i].hash;
    variant[k] = variants[t.variant[i]].c_str();
  }

  h5::write_attr(c, loc, s::kLayer, static_cast<int32_t>(t.layer));
  h5::write_attr(c, loc, s::kName, t.name);
  h5::write_attr(c, loc, s::kRowLength, row_length);
  h5::write_dataset(c, loc, s::kPositions, H5T_STD_I64LE, H5T_NATIVE_INT64, pos.data(), P);
  h5::write_dataset(c, loc, s::kOffsets, H5T_STD_I64LE, H5T_NATIVE_INT64, off.data(), P + 1);
  if (level == TapLevel::Full) {
    // Rows in position order from the scratch file, a piece (several rows) at a time.
    size_t next_row = 0;
    h5::write_f32_pieces(c, loc, s::kData, static_cast<uint64_t>(off[P]), piece,
                         [&](std::vector<float>& buf) -> uint64_t {
                           uint64_t filled = 0;
                           while (next_row < P) {
                             const size_t i = perm[next_row];
                             const uint64_t len = t.len[i];
                             if (filled + len > buf.size()) {
                               if (filled > 0) break;
                               buf.resize(len);  // one row longer than a piece
                             }
                             std::string why;
                             if (!spill.read(t.spill[i], buf.data() + filled, len * sizeof(float), &why))
                               c.fail("read the rows of " + gname + " back (" + why + ")");
                             filled += len;
                             ++next_row;
                           }
                           return filled;
                         });
  }
  h5::write_strings(c, loc, s::kVariant, variant);
  h5::write_dataset(c, loc, s::kAbsmax, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, absmax.data(), P);
  h5::write_dataset(c, loc, s::kMean, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, mean.data(), P);
  h5::write_dataset(c, loc, s::kNanCount, H5T_STD_U64LE, H5T_NATIVE_UINT64, nan.data(), P);
  h5::write_dataset(c, loc, s::kInfCount, H5T_STD_U64LE, H5T_NATIVE_UINT64, inf.data(), P);
  h5::write_dataset(c, loc, s::kHash, H5T_STD_U64LE, H5T_NATIVE_UINT64, hash.data(), P);
}

}  // namespace ds4
