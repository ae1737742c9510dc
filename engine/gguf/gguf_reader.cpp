// GGUF v3 reader: mmap the file, then validate the whole header before handing out anything.
//
// Layout (all little-endian):
//   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv    x { string key | u32 type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment | data section (tensor offsets are relative to its start)
// A string is u64 length + bytes (no terminator); an array value is u32 elem type + u64 count +
// elements.
//
// Every read goes through Cursor, which checks the remaining byte count first and fails with
// "truncated while reading <context>", so a hostile file cannot make us read out of bounds.
// Counts are checked against the bytes left before anything is allocated for them.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "ds4/mapped_file.h"
#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/json.h"  // printable()

namespace ds4 {

const char* gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::UINT8: return "u8";
    case GgufType::INT8: return "i8";
    case GgufType::UINT16: return "u16";
    case GgufType::INT16: return "i16";
    case GgufType::UINT32: return "u32";
    case GgufType::INT32: return "i32";
    case GgufType::FLOAT32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "str";
    case GgufType::ARRAY: return "array";
    case GgufType::UINT64: return "u64";
    case GgufType::INT64: return "i64";
    case GgufType::FLOAT64: return "f64";
  }
  return "unknown";
}

size_t GgufValue::array_size() const {
  if (type != GgufType::ARRAY) return 0;
  if (elem_type == GgufType::STRING) return strings.size();
  if (elem_type == GgufType::FLOAT32 || elem_type == GgufType::FLOAT64) return floats.size();
  return ints.size();
}

int64_t GgufTensor::nelements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // overflow excluded by the reader's validation
  return n;
}

int64_t GgufTensor::rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
  return n;
}

namespace {

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

bool is_integer_type(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_signed_type(GgufType t) {
  return t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 ||
         t == GgufType::INT64;
}

bool is_float_type(GgufType t) { return t == GgufType::FLOAT32 || t == GgufType::FLOAT64; }

// Byte size of a scalar value type; 0 for STRING/ARRAY/unknown.
size_t scalar_size(uint32_t t) {
  switch (static_cast<GgufType>(t)) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

std::string range_str(uint64_t begin, uint64_t end) {
  std::string s = "[";  // appended piecewise: GCC 12 warns (-Wrestrict) on "lit" + string&&
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  s += ")";
  return s;
}

}  // namespace

// Bounds-checked little-endian reader over the mapping. `context` names what is being read so a
// truncation error says where it happened.
struct GgufCursor {
  const uint8_t* base;
  size_t size;
  size_t pos = 0;
  const std::string& path;
  std::string context;

  [[noreturn]] void fail_here(const std::string& what) const { fail(path + ": " + what); }
  size_t left() const { return size - pos; }

  const uint8_t* take(size_t n) {
    if (n > left()) fail_here("truncated while reading " + context);
    const uint8_t* p = base + pos;
    pos += n;
    return p;
  }
  template <typename T>
  T read() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));  // host is little-endian (x86-64, aarch64)
    return v;
  }
  std::string read_string() {
    uint64_t n = read<uint64_t>();
    if (n > left()) fail_here("truncated while reading " + context);
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
};

struct GgufParser {
  GgufFile& f;
  GgufCursor cur;

  explicit GgufParser(GgufFile& file) : f(file), cur{file.base_, file.size_, 0, file.path_, {}} {}

  [[noreturn]] void error(const std::string& what) const { fail(f.path_ + ": " + what); }

  void parse() {
    cur.context = "header";
    if (f.size_ < 4 || std::memcmp(f.base_, "GGUF", 4) != 0)
      error("not a GGUF file (bad magic)");
    cur.pos = 4;
    f.version_ = cur.read<uint32_t>();
    if (f.version_ != 3)
      error("unsupported GGUF version " + std::to_string(f.version_) + " (only v3 is supported)");
    uint64_t n_tensors = cur.read<uint64_t>();
    uint64_t n_kv = cur.read<uint64_t>();
    // Smallest possible entries: a kv is key length (8) + type (4) + a 1-byte value; a tensor
    // info is name length (8) + n_dims (4) + one ne (8) + type (4) + offset (8).
    if (n_kv > cur.left() / 13)
      error("implausible metadata count " + std::to_string(n_kv) + " for a file of " +
            std::to_string(f.size_) + " bytes");
    if (n_tensors > cur.left() / 32)
      error("implausible tensor count " + std::to_string(n_tensors) + " for a file of " +
            std::to_string(f.size_) + " bytes");
    for (uint64_t i = 0; i < n_kv; ++i) read_kv(i);
    read_alignment();
    for (uint64_t i = 0; i < n_tensors; ++i) read_tensor_info(i);
    place_tensors();
  }

  void read_kv(uint64_t index) {
    cur.context = "metadata key #" + std::to_string(index) + " name";
    std::string key = cur.read_string();
    const std::string shown = printable(key);  // names from the file may hold any byte
    cur.context = "metadata key '" + shown + "'";
    if (f.kv_index_.count(key)) error("duplicate metadata key '" + shown + "'");
    uint32_t type = cur.read<uint32_t>();
    if (!known_value_type(type))
      error("unknown value type " + std::to_string(type) + " for metadata key '" + shown + "'");
    GgufValue v;
    v.type = static_cast<GgufType>(type);
    if (v.type == GgufType::ARRAY) read_array(shown, v);
    else read_scalar(v);
    f.kv_index_[key] = f.kv_.size();
    f.kv_.emplace_back(std::move(key), std::move(v));
  }

  // Fills u/i/f/s for one scalar of type v.type (already known to be a valid non-array type).
  void read_scalar(GgufValue& v) {
    switch (v.type) {
      case GgufType::UINT8: v.u = cur.read<uint8_t>(); break;
      case GgufType::UINT16: v.u = cur.read<uint16_t>(); break;
      case GgufType::UINT32: v.u = cur.read<uint32_t>(); break;
      case GgufType::UINT64: v.u = cur.read<uint64_t>(); break;
      case GgufType::INT8: v.i = cur.read<int8_t>(); break;
      case GgufType::INT16: v.i = cur.read<int16_t>(); break;
      case GgufType::INT32: v.i = cur.read<int32_t>(); break;
      case GgufType::INT64: v.i = cur.read<int64_t>(); break;
      case GgufType::FLOAT32: v.f = cur.read<float>(); break;
      case GgufType::FLOAT64: v.f = cur.read<double>(); break;
      case GgufType::STRING: v.s = cur.read_string(); break;
      case GgufType::BOOL: {
        uint8_t b = cur.read<uint8_t>();
        if (b > 1) error("bool value " + std::to_string(b) + " in " + cur.context);
        v.u = b;
        break;
      }
      case GgufType::ARRAY: break;  // handled by read_array
    }
    if (!is_signed_type(v.type) && v.u <= uint64_t(std::numeric_limits<int64_t>::max()))
      v.i = static_cast<int64_t>(v.u);
  }

  // `key` is the printable form of the key, for messages.
  void read_array(const std::string& key, GgufValue& v) {
    uint32_t elem = cur.read<uint32_t>();
    if (elem == static_cast<uint32_t>(GgufType::ARRAY))
      error("metadata key '" + key + "' is a nested array (not supported)");
    if (!known_value_type(elem))
      error("unknown array element type " + std::to_string(elem) + " for metadata key '" + key +
            "'");
    v.elem_type = static_cast<GgufType>(elem);
    uint64_t count = cur.read<uint64_t>();
    // Each string needs at least its 8-byte length; each number its scalar size.
    size_t min_elem = v.elem_type == GgufType::STRING ? 8 : scalar_size(elem);
    if (count > cur.left() / min_elem)
      error("array of " + std::to_string(count) + " elements for metadata key '" + key +
            "' runs past end of file (size " + std::to_string(f.size_) + ")");
    GgufValue e;
    e.type = v.elem_type;
    for (uint64_t j = 0; j < count; ++j) {
      read_scalar(e);
      if (e.type == GgufType::STRING) v.strings.push_back(std::move(e.s));
      else if (is_float_type(e.type)) v.floats.push_back(e.f);
      // u64 values above INT64_MAX keep their bit pattern, so a copy writes them back exactly.
      else v.ints.push_back(is_signed_type(e.type) ? e.i : static_cast<int64_t>(e.u));
    }
  }

  void read_alignment() {
    auto it = f.kv_index_.find("general.alignment");
    if (it == f.kv_index_.end()) return;
    const GgufValue& v = f.kv_[it->second].second;
    if (v.type != GgufType::UINT32)
      error(std::string("metadata key 'general.alignment' has type ") + gguf_type_name(v.type) +
            ", expected u32");
    if (v.u == 0 || (v.u & (v.u - 1)) != 0)
      error("general.alignment " + std::to_string(v.u) + " is not a power of two");
    f.alignment_ = static_cast<uint32_t>(v.u);
  }

  void read_tensor_info(uint64_t index) {
    cur.context = "tensor info #" + std::to_string(index) + " name";
    GgufTensor t;
    t.name = cur.read_string();
    const std::string who = "tensor '" + printable(t.name) + "'";
    cur.context = who;
    if (f.tensor_index_.count(t.name)) error("duplicate " + who);
    uint32_t n_dims = cur.read<uint32_t>();
    if (n_dims < 1 || n_dims > kMaxDims)
      error(who + " has " + std::to_string(n_dims) + " dimensions (expected 1.." +
            std::to_string(kMaxDims) + ")");
    // The product of the non-zero dimensions must fit in int64: with a zero dimension the element
    // count is 0, but rows() (the product of ne[1..]) and any partial product must not overflow
    // either (found by tests/fuzz: ne = [0, 2^54, 2^45]).
    int64_t extent = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = cur.read<uint64_t>();
      if (ne > uint64_t(std::numeric_limits<int64_t>::max()))
        error(who + " has negative dimension ne[" + std::to_string(d) + "]");
      t.ne.push_back(static_cast<int64_t>(ne));
      if (__builtin_mul_overflow(extent, std::max<int64_t>(t.ne.back(), 1), &extent))
        error(who + " element count overflows");
    }
    uint32_t type = cur.read<uint32_t>();
    if (!qtype_known(type))
      error("unknown tensor type " + std::to_string(type) + " for " + who);
    t.type = static_cast<QType>(type);
    t.offset = cur.read<uint64_t>();
    t.nbytes = tensor_nbytes(t, who);
    f.tensor_index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }

  // Bytes of the tensor, computed from the block layout with every step overflow-checked.
  size_t tensor_nbytes(const GgufTensor& t, const std::string& who) const {
    const QTypeInfo& info = qtype_info(t.type);
    if (t.ne[0] % info.block_elems != 0)
      error(who + " ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " +
            info.name + " block size " + std::to_string(info.block_elems));
    uint64_t bytes = uint64_t(t.ne[0] / info.block_elems);
    if (__builtin_mul_overflow(bytes, uint64_t(info.block_bytes), &bytes))
      error(who + " byte size overflows");
    for (size_t d = 1; d < t.ne.size(); ++d)
      if (__builtin_mul_overflow(bytes, uint64_t(t.ne[d]), &bytes))
        error(who + " byte size overflows");
    if (bytes > std::numeric_limits<size_t>::max()) error(who + " byte size overflows");
    return static_cast<size_t>(bytes);
  }

  // The data section starts at the next alignment boundary after the tensor infos. Each tensor
  // must be aligned, lie inside the file, and not overlap another one.
  void place_tensors() {
    const uint64_t align = f.alignment_;
    uint64_t data_start = (uint64_t(cur.pos) + align - 1) / align * align;
    if (f.tensors_.empty()) return;  // a tensor-less file may end without padding
    if (data_start > f.size_)
      error("truncated before the data section (starts at " + std::to_string(data_start) +
            ", size " + std::to_string(f.size_) + ")");
    const uint64_t data_size = f.size_ - data_start;
    for (GgufTensor& t : f.tensors_) {
      const std::string who = "tensor '" + printable(t.name) + "'";
      if (t.offset % align != 0)
        error(who + " offset " + std::to_string(t.offset) + " is not aligned to " +
              std::to_string(align));
      if (t.offset > data_size || t.nbytes > data_size - t.offset) {
        uint64_t begin = data_start + t.offset;
        uint64_t end = begin + t.nbytes;
        bool wrapped = begin < data_start || end < begin;
        error(who + " data " +
              (wrapped ? "at offset " + std::to_string(t.offset) : range_str(begin, end)) +
              " runs past end of file (size " + std::to_string(f.size_) + ")");
      }
      t.data = f.base_ + data_start + t.offset;
    }
    check_overlaps();
  }

  void check_overlaps() const {
    std::vector<const GgufTensor*> order;
    for (const GgufTensor& t : f.tensors_)
      if (t.nbytes > 0) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](auto a, auto b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const GgufTensor& a = *order[i - 1];
      const GgufTensor& b = *order[i];
      if (b.offset < a.offset + a.nbytes)
        error("tensor '" + printable(b.name) + "' data " +
              range_str(b.offset, b.offset + b.nbytes) + " overlaps tensor '" +
              printable(a.name) + "' data " +
              range_str(a.offset, a.offset + a.nbytes));
    }
  }
};

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const MappedRegion region = map_file_readonly(path);
  f->base_ = region.base;
  f->size_ = region.size;
  GgufParser(*f).parse();
  return f;
}

GgufFile::~GgufFile() {
  unmap_file({base_, size_});
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) fail(path_ + ": tensor '" + printable(name) + "' missing");
  return *t;
}

// ---- typed metadata getters ----

namespace {

const GgufValue& require(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (!v) fail(f.path() + ": metadata key '" + key + "' missing");
  return *v;
}

[[noreturn]] void wrong_type(const GgufFile& f, const std::string& key, const GgufValue& v,
                             const char* expected) {
  std::string have = gguf_type_name(v.type);
  if (v.type == GgufType::ARRAY) have += std::string(" of ") + gguf_type_name(v.elem_type);
  fail(f.path() + ": metadata key '" + key + "' has type " + have + ", expected " + expected);
}

// Integer value as (negative?, magnitude) so that range checks work for the full u64 and i64
// ranges alike.
struct IntValue {
  bool negative;
  uint64_t magnitude;
};

IntValue int_value(const GgufFile& f, const std::string& key, const GgufValue& v) {
  if (!is_integer_type(v.type)) wrong_type(f, key, v, "integer");
  if (is_signed_type(v.type) && v.i < 0) return {true, uint64_t(0) - uint64_t(v.i)};
  return {false, is_signed_type(v.type) ? uint64_t(v.i) : v.u};
}

std::string int_str(IntValue x) {
  std::string s = x.negative ? "-" : "";
  s += std::to_string(x.magnitude);
  return s;
}

uint64_t unsigned_in_range(const GgufFile& f, const std::string& key, const GgufValue& v,
                           uint64_t max, const char* type) {
  IntValue x = int_value(f, key, v);
  if (x.negative || x.magnitude > max)
    fail(f.path() + ": metadata key '" + key + "' value " + int_str(x) + " does not fit in " +
         type);
  return x.magnitude;
}

}  // namespace

uint32_t GgufFile::get_u32(const std::string& key) const {
  return static_cast<uint32_t>(
      unsigned_in_range(*this, key, require(*this, key), 0xFFFFFFFFu, "u32"));
}

uint64_t GgufFile::get_u64(const std::string& key) const {
  return unsigned_in_range(*this, key, require(*this, key), ~uint64_t(0), "u64");
}

int64_t GgufFile::get_i64(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  IntValue x = int_value(*this, key, v);
  const uint64_t limit = uint64_t(1) << 63;  // |INT64_MIN|; INT64_MAX is one less
  if (x.magnitude > limit || (!x.negative && x.magnitude == limit))
    fail(path_ + ": metadata key '" + key + "' value " + int_str(x) + " does not fit in i64");
  return x.negative ? static_cast<int64_t>(uint64_t(0) - x.magnitude)
                    : static_cast<int64_t>(x.magnitude);
}

float GgufFile::get_f32(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (is_float_type(v.type)) return static_cast<float>(v.f);
  if (is_integer_type(v.type))
    return is_signed_type(v.type) ? static_cast<float>(v.i) : static_cast<float>(v.u);
  wrong_type(*this, key, v, "float");
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufType::BOOL) wrong_type(*this, key, v, "bool");
  return v.u != 0;
}

std::string GgufFile::get_str(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufType::STRING) wrong_type(*this, key, v, "str");
  return v.s;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufType::ARRAY ||
      !(is_integer_type(v.elem_type) || v.elem_type == GgufType::BOOL))
    wrong_type(*this, key, v, "array of integers");
  return v.ints;
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.type == GgufType::ARRAY && is_float_type(v.elem_type)) return v.floats;
  if (v.type == GgufType::ARRAY && is_integer_type(v.elem_type)) {
    std::vector<double> out;
    out.reserve(v.ints.size());
    for (int64_t x : v.ints)
      out.push_back(v.elem_type == GgufType::UINT64 ? double(uint64_t(x)) : double(x));
    return out;
  }
  wrong_type(*this, key, v, "array of numbers");
}

const std::vector<std::string>& GgufFile::get_str_array(const std::string& key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufType::ARRAY || v.elem_type != GgufType::STRING)
    wrong_type(*this, key, v, "array of str");
  return v.strings;
}

uint32_t GgufFile::get_u32_or(const std::string& key, uint32_t fallback) const {
  return has(key) ? get_u32(key) : fallback;
}

float GgufFile::get_f32_or(const std::string& key, float fallback) const {
  return has(key) ? get_f32(key) : fallback;
}

bool GgufFile::get_bool_or(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

std::string GgufFile::get_str_or(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_str(key) : fallback;
}

}  // namespace ds4
