// DumpReader: opens a tap dump, validates it against schema 1 (dumps/SCHEMA.md) and serves rows by
// (layer, name, position). Only the tap order and manifest are read at open; a tap's index
// (positions, offsets, stats, variants) is read when first needed and cached one tap at a time,
// and data is read by hyperslab, so memory stays bounded however large the dump is.

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <type_traits>

#include "ds4/dump.h"
#include "ds4/error.h"
#include "ds4/mapped_file.h"
#include "dump_hdf5.h"
#include "dump_schema.h"
#include "dump_seal.h"

namespace ds4 {

namespace {

// Blocks of rows read at once by for_each_row.
constexpr uint64_t kBlockBytes = 64ull << 20;

// The per-position index of one tap. Shapes: [P] except off [P+1].
struct TapIndex {
  int layer = 0;
  std::string name, group;
  std::vector<int64_t> pos, off;
  std::vector<double> absmax, mean;
  std::vector<uint64_t> nan, inf, hash;
  std::vector<std::string> variant;

  TensorStats stats(size_t i) const { return {absmax[i], mean[i], nan[i], inf[i], hash[i]}; }
};

}  // namespace

struct DumpReader::Impl {
  std::string path;
  h5::Context c;
  h5::Handle file;
  RunManifest manifest;
  TapLevel level = TapLevel::Off;
  std::vector<TapKey> taps;
  std::map<TapKey, size_t> index;
  std::vector<std::pair<int64_t, int64_t>> forwards;
  mutable std::shared_ptr<const TapIndex> cache;  // the last tap whose index was read

  [[noreturn]] void missing(const std::string& what) const {
    fail(path + ": dump is missing " + what + " (required by schema " +
         std::to_string(kDumpSchemaVersion) + ")");
  }
  h5::Handle open_dataset(hid_t loc, const std::string& loc_name, const char* name) const;
  std::shared_ptr<const TapIndex> load(int layer, const std::string& name) const;
  size_t find_row(const TapIndex& t, int64_t pos) const;
  void read_manifest();
  void read_layout();
};

namespace {

// hardening (found by tests/fuzz/fuzz_dump): libhdf5 1.10 (Debian 12's) trusts the object table of
// a global heap collection, where every variable-length string lives. A free-space entry of size
// 0 makes its decoder (H5HG__cache_heap_deserialize) loop forever, and an object whose size runs
// past its collection makes H5HG_read copy out of bounds. Before HDF5 sees the file, every
// collection ("GCOL", version 1, 3 zero bytes, u64 size; objects: u16 index, u16 refs, 4
// reserved, u64 size, data padded to 8) is walked the way HDF5 walks it, bytes past the end of
// the file reading as zeros as HDF5's sec2 driver returns them; a collection HDF5 would hang or
// overrun on is refused. One pass over the mapped file, no allocation.
// Assumes 8-byte lengths (HDF5's default, and what DumpWriter writes).
void check_global_heaps(const std::string& path, const uint8_t* base, uint64_t size) {
  if (size < 16) return;
  auto u64_at = [&](uint64_t off) {  // little-endian, zeros past the end of the file
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | (off + i < size ? base[off + i] : 0);
    return v;
  };
  auto u16_at = [&](uint64_t off) {
    return uint16_t((off < size ? base[off] : 0) | (off + 1 < size ? base[off + 1] : 0) << 8);
  };
  std::string bad;
  static const uint8_t kSig[8] = {'G', 'C', 'O', 'L', 1, 0, 0, 0};
  for (const uint8_t* hit = base; bad.empty();) {
    hit = static_cast<const uint8_t*>(memmem(hit, size - uint64_t(hit - base), kSig, sizeof kSig));
    if (!hit) break;
    const uint64_t at = uint64_t(hit - base);
    const uint64_t heap_size = u64_at(at + 8);
    uint64_t end = 0;
    if (__builtin_add_overflow(at, heap_size, &end)) end = UINT64_MAX;
    for (uint64_t p = at + 16; p < end;) {
      if (end - p < 16) break;  // too small for an object header: free space, the walk ends
      const uint16_t idx = u16_at(p);
      const uint64_t obj = u64_at(p + 8);
      uint64_t need = obj;  // index 0 (free space) spans `size` bytes, header included
      if (idx > 0) {
        const uint64_t aligned = obj > UINT64_MAX - 7 - 16 ? UINT64_MAX - 16 : (obj + 7) / 8 * 8;
        need = 16 + aligned;
        if (obj > end - p - 16) {
          bad = "object " + std::to_string(idx) + " runs past its global heap collection at byte " +
                std::to_string(at);
          break;
        }
      }
      if (need == 0) {
        bad = "global heap collection at byte " + std::to_string(at) + " has an empty free-space entry";
        break;
      }
      if (need > end - p) break;  // HDF5's walk ends past the collection
      p += need;
    }
    hit += 1;
  }
  if (!bad.empty()) fail(path + ": not a readable HDF5 dump (corrupt: " + bad + ")");
}

// Where to send a user whose dump cannot be read: the command that wrote it, when recorded.
std::string regenerate_hint(const h5::Context& c, hid_t root) {
  std::string cmd;
  if (h5::has_attr(root, "command_line")) {
    try {
      cmd = h5::read_attr_string(c, root, "command_line");
    } catch (const Error&) {
    }
  }
  if (cmd.empty()) return "regenerate it with `ds4-parity run ...` (see dumps/SCHEMA.md)";
  return "regenerate it with `" + cmd + "`";
}

}  // namespace

DumpReader DumpReader::open(const std::string& path) {
  h5::quiet();
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->c.prefix = path;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail(path + ": not a readable HDF5 dump (" +
         (std::filesystem::exists(path, ec) ? "not a regular file" : "no such file") + ")");
  {
    // Both checks run on one mapping of the file, before libhdf5 parses anything (dump_seal.h
    // says why).
    const MappedFile file(path);
    verify_dump_seal(path, file.data(), file.size());
    check_global_heaps(path, file.data(), file.size());
  }
  const htri_t is_h5 = H5Fis_hdf5(path.c_str());
  if (is_h5 == 0) fail(path + ": not a readable HDF5 dump (no HDF5 signature)");
  if (is_h5 < 0) fail(path + ": not a readable HDF5 dump (" + h5::last_error() + ")");
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) fail(path + ": not a readable HDF5 dump (" + h5::last_error() + ")");
  impl->file = h5::Handle(f);

  const hid_t root = impl->file.get();
  if (!h5::has_attr(root, "schema_version"))
    fail(path + ": not a DS4 tap dump (root attribute 'schema_version' is missing); " +
         regenerate_hint(impl->c, root));
  const int64_t version = h5::read_attr_int(impl->c, root, "schema_version");
  if (version != kDumpSchemaVersion)
    fail(path + ": dump schema version " + std::to_string(version) +
         " is not supported (this build reads " + std::to_string(kDumpSchemaVersion) + "); " +
         regenerate_hint(impl->c, root));
  impl->read_manifest();
  impl->read_layout();
  return DumpReader(std::move(impl));
}

void DumpReader::Impl::read_manifest() {
  namespace s = dump_schema;
  const hid_t root = file.get();
  s::for_each_manifest_field(manifest, [&](const char* name, auto& v) {
    using T = std::decay_t<decltype(v)>;
    if constexpr (std::is_same_v<T, std::vector<int32_t>>) {
      h5::Handle d = open_dataset(root, "", name);
      v.resize(h5::dataset_size(c, d.get(), name));
      h5::read_dataset(c, d.get(), H5T_NATIVE_INT32, v.data(), 0, v.size(), name);
    } else {
      if (!h5::has_attr(root, name)) missing(std::string("root attribute '") + name + "'");
      if constexpr (std::is_same_v<T, std::string>) {
        v = h5::read_attr_string(c, root, name);
      } else if constexpr (std::is_same_v<T, uint64_t>) {
        v = h5::read_attr_uint(c, root, name);
      } else {
        v = static_cast<T>(h5::read_attr_int(c, root, name));
      }
    }
  });
  // extra.<k> attributes, in name order (H5Aiterate over the name index).
  struct Ctx {
    const Impl* self;
    std::vector<std::string> names;
  } ctx{this, {}};
  auto collect = [](hid_t, const char* name, const H5A_info_t*, void* p) -> herr_t {
    const std::string n = name;
    if (n.rfind(dump_schema::kExtraPrefix, 0) == 0) static_cast<Ctx*>(p)->names.push_back(n);
    return 0;
  };
  hsize_t idx = 0;
  if (H5Aiterate2(root, H5_INDEX_NAME, H5_ITER_INC, &idx, collect, &ctx) < 0)
    c.fail("list root attributes");
  for (const std::string& n : ctx.names)
    manifest.extra[n.substr(std::string(s::kExtraPrefix).size())] =
        h5::read_attr_string(c, root, n.c_str());
  try {
    level = tap_level_from_name(manifest.tap_level);
  } catch (const Error& e) {
    fail(path + ": root attribute 'tap_level': " + e.what());
  }
}

void DumpReader::Impl::read_layout() {
  namespace s = dump_schema;
  const hid_t root = file.get();
  {
    h5::Handle d = open_dataset(root, "", s::kForwards);
    const uint64_t n = h5::dataset_size(c, d.get(), s::kForwards);
    if (n % 2) fail(path + ": dataset 'forwards' is not [F, 2]");
    std::vector<int64_t> fw(n);
    if (n) {
      if (H5Dread(d.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, fw.data()) < 0)
        c.fail("read dataset 'forwards'");
    }
    for (uint64_t i = 0; i < n; i += 2) forwards.emplace_back(fw[i], fw[i + 1]);
  }
  h5::Handle dl = open_dataset(root, "", s::kOrderLayer);
  h5::Handle dn = open_dataset(root, "", s::kOrderName);
  std::vector<int32_t> layers(h5::dataset_size(c, dl.get(), s::kOrderLayer));
  h5::read_dataset(c, dl.get(), H5T_NATIVE_INT32, layers.data(), 0, layers.size(), s::kOrderLayer);
  const std::vector<std::string> names = h5::read_strings(c, dn.get(), s::kOrderName);
  if (names.size() != layers.size())
    fail(path + ": datasets 'tap_order_layer' and 'tap_order_name' differ in length");
  for (size_t i = 0; i < names.size(); ++i) {
    TapKey key{layers[i], names[i]};
    const std::string lg = dump_layer_group(key.layer);
    if (!h5::has_link(root, lg.c_str()) || !h5::has_link(root, (lg + "/" + key.name).c_str()))
      missing("group '" + lg + "/" + key.name + "' listed in tap_order");
    if (!index.emplace(key, taps.size()).second)
      fail(path + ": " + tap_key_text(key.layer, key.name) + " is listed twice in tap_order");
    taps.push_back(std::move(key));
  }
}

h5::Handle DumpReader::Impl::open_dataset(hid_t loc, const std::string& loc_name,
                                          const char* name) const {
  const std::string full = loc_name.empty() ? name : loc_name + "/" + name;
  if (!h5::has_link(loc, name)) missing("dataset '" + full + "'");
  return h5::Handle(c.check(H5Dopen2(loc, name, H5P_DEFAULT), "open dataset '" + full + "'"));
}

std::shared_ptr<const TapIndex> DumpReader::Impl::load(int layer, const std::string& name) const {
  namespace s = dump_schema;
  if (cache && cache->layer == layer && cache->name == name) return cache;
  if (!index.count({layer, name}))
    fail(path + ": no tap " + tap_key_text(layer, name) + " in this dump");
  auto t = std::make_shared<TapIndex>();
  t->layer = layer;
  t->name = name;
  t->group = dump_layer_group(layer) + "/" + name;
  h5::Handle g(c.check(H5Gopen2(file.get(), t->group.c_str(), H5P_DEFAULT),
                       "open group '" + t->group + "'"));
  const hid_t loc = g.get();
  auto read = [&](const char* ds, hid_t type, auto& vec, uint64_t expect) {
    h5::Handle d = open_dataset(loc, t->group, ds);
    const std::string what = "dataset '" + t->group + "/" + ds + "'";
    const uint64_t n = h5::dataset_size(c, d.get(), what);
    if (expect != UINT64_MAX && n != expect)
      fail(path + ": " + what + " has " + std::to_string(n) + " elements, expected " +
           std::to_string(expect));
    vec.resize(n);
    h5::read_dataset(c, d.get(), type, vec.data(), 0, n, what);
  };
  read(s::kPositions, H5T_NATIVE_INT64, t->pos, UINT64_MAX);
  const uint64_t P = t->pos.size();
  read(s::kOffsets, H5T_NATIVE_INT64, t->off, P + 1);
  read(s::kAbsmax, H5T_NATIVE_DOUBLE, t->absmax, P);
  read(s::kMean, H5T_NATIVE_DOUBLE, t->mean, P);
  read(s::kNanCount, H5T_NATIVE_UINT64, t->nan, P);
  read(s::kInfCount, H5T_NATIVE_UINT64, t->inf, P);
  read(s::kHash, H5T_NATIVE_UINT64, t->hash, P);
  {
    h5::Handle d = open_dataset(loc, t->group, s::kVariant);
    t->variant = h5::read_strings(c, d.get(), "dataset '" + t->group + "/variant'");
    if (t->variant.size() != P)
      fail(path + ": dataset '" + t->group + "/variant' has " + std::to_string(t->variant.size()) +
           " elements, expected " + std::to_string(P));
  }
  for (size_t i = 0; i + 1 < P; ++i)
    if (t->pos[i] >= t->pos[i + 1])
      fail(path + ": dataset '" + t->group + "/positions' is not strictly ascending");
  if (t->off[0] != 0) fail(path + ": dataset '" + t->group + "/offsets' does not start at 0");
  for (size_t i = 0; i < P; ++i)
    if (t->off[i + 1] < t->off[i])
      fail(path + ": dataset '" + t->group + "/offsets' is decreasing");
  if (level == TapLevel::Full) {
    h5::Handle d = open_dataset(loc, t->group, s::kData);
    const std::string what = "dataset '" + t->group + "/data'";
    const uint64_t n = h5::dataset_size(c, d.get(), what);
    if (n != uint64_t(t->off[P]))
      fail(path + ": " + what + " has " + std::to_string(n) + " elements, offsets end at " +
           std::to_string(t->off[P]));
  }
  cache = t;
  return cache;
}

size_t DumpReader::Impl::find_row(const TapIndex& t, int64_t pos) const {
  auto it = std::lower_bound(t.pos.begin(), t.pos.end(), pos);
  if (it == t.pos.end() || *it != pos) {
    std::string range = t.pos.empty()
                            ? "none"
                            : std::to_string(t.pos.front()) + ".." + std::to_string(t.pos.back());
    fail(path + ": " + tap_key_text(t.layer, t.name) + " has no position " + std::to_string(pos) +
         " (stored: " + std::to_string(t.pos.size()) + " positions in " + range + ")");
  }
  return static_cast<size_t>(it - t.pos.begin());
}

DumpReader::DumpReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DumpReader::DumpReader(DumpReader&&) noexcept = default;
DumpReader& DumpReader::operator=(DumpReader&&) noexcept = default;
DumpReader::~DumpReader() = default;

const std::string& DumpReader::path() const { return impl_->path; }
const RunManifest& DumpReader::manifest() const { return impl_->manifest; }
TapLevel DumpReader::level() const { return impl_->level; }
const std::vector<TapKey>& DumpReader::taps() const { return impl_->taps; }
const std::vector<std::pair<int64_t, int64_t>>& DumpReader::forwards() const {
  return impl_->forwards;
}

bool DumpReader::has_tap(int layer, const std::string& name) const {
  return impl_->index.count({layer, name}) > 0;
}

std::vector<int64_t> DumpReader::positions(int layer, const std::string& name) const {
  return impl_->load(layer, name)->pos;
}

std::vector<float> DumpReader::row(int layer, const std::string& name, int64_t pos) const {
  const Impl& m = *impl_;
  const auto t = m.load(layer, name);
  const size_t i = m.find_row(*t, pos);
  if (m.level != TapLevel::Full)
    fail(m.path + ": " + tap_key_text(layer, name) + " position " + std::to_string(pos) +
         ": this dump holds stats only (tap level " + m.manifest.tap_level +
         "); rerun with tap level full");
  std::vector<float> out(t->off[i + 1] - t->off[i]);
  h5::Handle d = m.open_dataset(m.file.get(), "", (t->group + "/" + dump_schema::kData).c_str());
  h5::read_dataset(m.c, d.get(), H5T_NATIVE_FLOAT, out.data(), t->off[i], out.size(),
                   "dataset '" + t->group + "/data'");
  return out;
}

TensorStats DumpReader::stats(int layer, const std::string& name, int64_t pos) const {
  const auto t = impl_->load(layer, name);
  return t->stats(impl_->find_row(*t, pos));
}

std::string DumpReader::variant(int layer, const std::string& name, int64_t pos) const {
  const auto t = impl_->load(layer, name);
  return t->variant[impl_->find_row(*t, pos)];
}

void DumpReader::for_each_row(int layer, const std::string& name,
                              const std::function<void(const DumpRow&)>& fn) const {
  const Impl& m = *impl_;
  const auto t = m.load(layer, name);  // kept alive even if fn reads other taps
  const size_t P = t->pos.size();
  const bool full = m.level == TapLevel::Full;
  h5::Handle d;
  const std::string what = "dataset '" + t->group + "/data'";
  if (full) d = m.open_dataset(m.file.get(), "", (t->group + "/" + dump_schema::kData).c_str());
  std::vector<float> block;
  for (size_t b = 0; b < P;) {
    // Rows [b, e): as many as fit in one block, at least one.
    size_t e = b + 1;
    while (e < P && uint64_t(t->off[e + 1] - t->off[b]) * sizeof(float) <= kBlockBytes) ++e;
    if (full) {
      block.resize(t->off[e] - t->off[b]);
      h5::read_dataset(m.c, d.get(), H5T_NATIVE_FLOAT, block.data(), t->off[b], block.size(), what);
    }
    for (size_t i = b; i < e; ++i) {
      DumpRow r;
      r.pos = t->pos[i];
      r.length = size_t(t->off[i + 1] - t->off[i]);
      r.has_data = full;
      if (full) r.data = std::span<const float>(block.data() + (t->off[i] - t->off[b]), r.length);
      r.stats = t->stats(i);
      r.variant = t->variant[i];
      fn(r);
    }
    b = e;
  }
}

}  // namespace ds4
