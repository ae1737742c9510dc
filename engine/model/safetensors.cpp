// safetensors reader.
//
// Layout: u64 little-endian header length N | N bytes of JSON | data section. The JSON is an
// object mapping tensor name -> {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative
// to the data section) plus an optional "__metadata__" object of string -> string.
//
// Everything in the header is validated before any tensor pointer is handed out: the header
// length, the JSON (strict parser, ds4/json.h), each dtype, that shape product * dtype size
// equals end - begin, that [begin, end) lies in the data section, and that no two tensors overlap.
#include "ds4/mapped_file.h"
#include "ds4/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>

#include "ds4/error.h"
#include "ds4/json.h"
#include "ds4/quant.h"

namespace ds4 {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

// The reference implementation refuses headers of 100 MB or more; so do we, which also bounds
// the memory a hostile header can make the JSON parser allocate.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Element width in bits (sub-byte float formats included); 0 for an unknown dtype.
int dtype_bits(const std::string& dtype) {
  static const std::pair<const char*, int> kTable[] = {
      {"BOOL", 8},    {"U8", 8},        {"I8", 8},       {"F8_E5M2", 8},  {"F8_E4M3", 8},
      {"F8_E8M0", 8}, {"I16", 16},      {"U16", 16},     {"F16", 16},     {"BF16", 16},
      {"I32", 32},    {"U32", 32},      {"F32", 32},     {"F64", 64},     {"I64", 64},
      {"U64", 64},    {"F4", 4},        {"F6_E2M3", 6},  {"F6_E3M2", 6},
  };
  for (const auto& [name, bits] : kTable)
    if (dtype == name) return bits;
  return 0;
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // data is not necessarily aligned
  return v;
}

}  // namespace

int64_t SafeTensor::nelements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // overflow excluded by the reader's validation
  return n;
}

std::vector<float> SafeTensor::to_f32() const {
  const size_t n = static_cast<size_t>(nelements());
  std::vector<float> out(n);
  if (dtype == "F32") {
    if (n) std::memcpy(out.data(), data, n * 4);
  } else if (dtype == "F16") {
    for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(load<uint16_t>(data + 2 * i));
  } else if (dtype == "BF16") {
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(load<uint16_t>(data + 2 * i));
  } else if (dtype == "F64") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(data + 8 * i));
  } else {
    fail("tensor '" + printable(name) + "': cannot convert dtype " + dtype + " to F32");
  }
  return out;
}

std::vector<int64_t> SafeTensor::to_i64() const {
  const size_t n = static_cast<size_t>(nelements());
  std::vector<int64_t> out(n);
  if (dtype == "I64") {
    if (n) std::memcpy(out.data(), data, n * 8);
  } else if (dtype == "I32") {
    for (size_t i = 0; i < n; ++i) out[i] = load<int32_t>(data + 4 * i);
  } else if (dtype == "I16") {
    for (size_t i = 0; i < n; ++i) out[i] = load<int16_t>(data + 2 * i);
  } else if (dtype == "I8") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<int8_t>(data[i]);
  } else if (dtype == "U8") {
    for (size_t i = 0; i < n; ++i) out[i] = data[i];
  } else {
    fail("tensor '" + printable(name) + "': cannot convert dtype " + dtype + " to I64");
  }
  return out;
}

struct SafetensorsParser {
  SafetensorsFile& f;

  [[noreturn]] void error(const std::string& what) const { fail(f.path_ + ": " + what); }

  void parse() {
    if (f.size_ < 8)
      error("truncated while reading the header length (size " + std::to_string(f.size_) + ")");
    const uint64_t header_len = load<uint64_t>(f.base_);
    if (header_len > f.size_ - 8)
      error("header length " + std::to_string(header_len) + " runs past end of file (size " +
            std::to_string(f.size_) + ")");
    if (header_len >= kMaxHeaderBytes)
      error("header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
    std::string_view text(reinterpret_cast<const char*>(f.base_ + 8), header_len);
    Json header = Json::parse(text, f.path_ + ": header");
    if (!header.is_object())
      error(std::string("header is a JSON ") + Json::kind_name(header.kind) +
            ", expected an object");
    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = f.size_ - data_start;
    for (const auto& [name, entry] : header.members) {
      if (name == "__metadata__") read_metadata(entry);
      else read_tensor(name, entry, data_start, data_size);
    }
    check_overlaps();
  }

  void read_metadata(const Json& meta) {
    if (!meta.is_object()) error("__metadata__ is not a JSON object");
    for (const auto& [key, value] : meta.members) {
      if (!value.is_string())
        error("__metadata__ value for '" + printable(key) + "' is not a string");
      f.metadata_[key] = value.string;
    }
  }

  // A JSON number that is a non-negative integer (offsets and dimensions).
  int64_t non_negative_int(const Json& v, const std::string& who, const char* field) const {
    if (!v.is_number() || !v.is_integer || v.integer < 0)
      error(who + " " + field + " entry " + printable(v.dump(), 40) +
            " is not a non-negative integer");
    return v.integer;
  }

  void read_tensor(const std::string& name, const Json& entry, uint64_t data_start,
                   uint64_t data_size) {
    const std::string who = "tensor '" + printable(name) + "'";
    if (!entry.is_object()) error(who + " entry is not a JSON object");
    for (const auto& member : entry.members)
      if (member.first != "dtype" && member.first != "shape" && member.first != "data_offsets")
        error(who + " has unknown field '" + printable(member.first) + "'");
    const Json* dtype = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offsets = entry.find("data_offsets");
    if (!dtype || !dtype->is_string()) error(who + " has no string 'dtype'");
    if (!shape || !shape->is_array()) error(who + " has no array 'shape'");
    if (!offsets || !offsets->is_array() || offsets->array.size() != 2)
      error(who + " has no 'data_offsets' pair");

    SafeTensor t;
    t.name = name;
    t.dtype = dtype->string;
    const int bits = dtype_bits(t.dtype);
    if (bits == 0) error(who + " has unknown dtype '" + printable(t.dtype) + "'");
    int64_t nelem = 1;
    for (const Json& d : shape->array) {
      t.shape.push_back(non_negative_int(d, who, "shape"));
      if (__builtin_mul_overflow(nelem, t.shape.back(), &nelem))
        error(who + " element count overflows");
    }
    const uint64_t begin = uint64_t(non_negative_int(offsets->array[0], who, "data_offsets"));
    const uint64_t end = uint64_t(non_negative_int(offsets->array[1], who, "data_offsets"));
    if (end < begin)
      error(who + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
            ") end before begin");
    if (end > data_size)
      error(who + " data [" + std::to_string(begin) + ", " + std::to_string(end) +
            ") runs past end of data section (size " + std::to_string(data_size) + ")");
    uint64_t total_bits = 0;
    if (__builtin_mul_overflow(uint64_t(nelem), uint64_t(bits), &total_bits))
      error(who + " byte size overflows");
    if (total_bits % 8 != 0 || total_bits / 8 != end - begin)
      error(who + " shape " + shape->dump() + " of " + t.dtype + " needs " +
            (total_bits % 8 ? "a fractional number of" : std::to_string(total_bits / 8)) +
            " bytes but data_offsets span " + std::to_string(end - begin));
    t.data = f.base_ + data_start + begin;
    t.nbytes = static_cast<size_t>(end - begin);
    f.index_[name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }

  void check_overlaps() const {
    std::vector<const SafeTensor*> order;
    for (const SafeTensor& t : f.tensors_)
      if (t.nbytes > 0) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto a, auto b) { return a->data < b->data; });
    for (size_t i = 1; i < order.size(); ++i) {
      const SafeTensor& a = *order[i - 1];
      const SafeTensor& b = *order[i];
      if (b.data < a.data + a.nbytes)
        error("tensor '" + printable(b.name) + "' data overlaps tensor '" + printable(a.name) +
              "'");
    }
  }
};

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const MappedRegion region = map_file_readonly(path);
  f->base_ = region.base;
  f->size_ = region.size;
  SafetensorsParser{*f}.parse();
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  unmap_file({base_, size_});
}

const SafeTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafeTensor& SafetensorsFile::get(const std::string& name) const {
  const SafeTensor* t = find(name);
  if (!t) fail(path_ + ": tensor '" + printable(name) + "' missing");
  return *t;
}

}  // namespace ds4
