// Tests for the GGUF v3 reader and writer (ds4/gguf.h):
//   - write -> read round trips of every metadata type and of F32/F16/Q8_0/I32 tensors;
//   - reader -> writer copies that reproduce the file byte for byte;
//   - hand-built defective files, each rejected with its one-line message (never a crash),
//     including every truncation of a valid file and a deterministic byte-flip fuzz;
//   - writer failures (missing directory, I/O error, rename onto a directory) leave neither a
//     ".tmp" nor a final file behind.
#include "ds4/gguf.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "ds4/error.h"
#include "../support/errors.h"
#include "../support/scratch.h"

namespace {

namespace fs = std::filesystem;
using ds4::GgufFile;
using ds4::GgufType;
using ds4::GgufValue;
using ds4::GgufWriter;
using ds4::QType;

// A fresh folder per test, removed with its contents at scope exit.
struct TempDir : ds4::testing::TempDir {
  TempDir() : ds4::testing::TempDir("ds4_gguf_test") {}
};

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Opens `path` expecting a ds4::Error; checks the message is one line naming the file.
std::string open_error(const std::string& path) {
  return ds4::testing::open_error_of(path, [](const std::string& p) { GgufFile::open(p); });
}

// Little-endian byte builder for hand-made (possibly defective) GGUF files.
struct Raw {
  std::vector<uint8_t> b;
  template <typename T>
  Raw& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof v);
    b.insert(b.end(), tmp, tmp + sizeof v);
    return *this;
  }
  Raw& u32(uint32_t v) { return put(v); }
  Raw& u64(uint64_t v) { return put(v); }
  Raw& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Raw& kv_u32(const std::string& key, uint32_t v) {
    return str(key).u32(uint32_t(GgufType::UINT32)).u32(v);
  }
  Raw& tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
              uint64_t offset) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  Raw& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

GgufValue scalar_value(GgufType type, uint64_t u, int64_t i, double f) {
  GgufValue v;
  v.type = type;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}

GgufValue int_array(GgufType elem, std::vector<int64_t> ints) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = elem;
  v.ints = std::move(ints);
  return v;
}

// Writes one key of every type (through both the typed setters and set_value).
void set_all_types(GgufWriter& w) {
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -5);
  w.set_u64("t.u64", uint64_t(1) << 40);
  w.set_f32("t.f32", 1.5f);
  w.set_bool("t.bool", true);
  w.set_str("t.str", "h\xC3\xA9llo");
  w.set_str("t.str_nul", std::string("a\0b", 3));
  w.set_str("t.str_empty", "");
  w.set_arr_str("t.arr_str", {"x", "", "yz"});
  w.set_arr_i32("t.arr_i32", {-1, 2, INT32_MIN});
  w.set_arr_u32("t.arr_u32", {0, UINT32_MAX});
  w.set_arr_f32("t.arr_f32", {0.5f, -2.0f});
  w.set_value("t.u8", scalar_value(GgufType::UINT8, 200, 200, 0));
  w.set_value("t.i8", scalar_value(GgufType::INT8, 0, -100, 0));
  w.set_value("t.u16", scalar_value(GgufType::UINT16, 65535, 65535, 0));
  w.set_value("t.i16", scalar_value(GgufType::INT16, 0, -30000, 0));
  w.set_value("t.i64", scalar_value(GgufType::INT64, 0, INT64_MIN, 0));
  w.set_value("t.u64_max", scalar_value(GgufType::UINT64, UINT64_MAX, 0, 0));
  w.set_value("t.f64", scalar_value(GgufType::FLOAT64, 0, 0, 0.1));
  w.set_value("t.bool_false", scalar_value(GgufType::BOOL, 0, 0, 0));
  w.set_value("t.arr_u8", int_array(GgufType::UINT8, {0, 255}));
  w.set_value("t.arr_i8", int_array(GgufType::INT8, {-128, 127}));
  w.set_value("t.arr_u16", int_array(GgufType::UINT16, {65535}));
  w.set_value("t.arr_i16", int_array(GgufType::INT16, {-32768}));
  w.set_value("t.arr_i64", int_array(GgufType::INT64, {INT64_MIN, INT64_MAX}));
  // u64 elements above INT64_MAX are kept as their bit pattern in `ints`.
  w.set_value("t.arr_u64", int_array(GgufType::UINT64, {7, int64_t((uint64_t(1) << 63) + 5)}));
  w.set_value("t.arr_bool", int_array(GgufType::BOOL, {1, 0, 1}));
  GgufValue f64s;
  f64s.type = GgufType::ARRAY;
  f64s.elem_type = GgufType::FLOAT64;
  f64s.floats = {0.1, -1e300};
  w.set_value("t.arr_f64", f64s);
  w.set_arr_str("t.arr_str_empty", {});
  w.set_arr_f32("t.arr_f32_empty", {});
}

TEST(Gguf, MetadataRoundTripEveryType) {
  TempDir dir;
  GgufWriter w;
  set_all_types(w);
  const std::string path = dir.file("meta.gguf");
  w.write(path);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_TRUE(f->tensors().empty());
  ASSERT_EQ(f->metadata().size(), 30u);
  EXPECT_EQ(f->metadata()[0].first, "t.u32");  // insertion order kept
  EXPECT_EQ(f->metadata()[29].first, "t.arr_f32_empty");

  EXPECT_EQ(f->find("t.u32")->type, GgufType::UINT32);
  EXPECT_EQ(f->get_u32("t.u32"), 4000000000u);
  EXPECT_EQ(f->get_i64("t.i32"), -5);
  EXPECT_EQ(f->find("t.i32")->type, GgufType::INT32);
  EXPECT_EQ(f->get_u64("t.u64"), uint64_t(1) << 40);
  EXPECT_EQ(f->get_f32("t.f32"), 1.5f);
  EXPECT_TRUE(f->get_bool("t.bool"));
  EXPECT_FALSE(f->get_bool("t.bool_false"));
  EXPECT_EQ(f->get_str("t.str"), "h\xC3\xA9llo");
  EXPECT_EQ(f->get_str("t.str_nul"), std::string("a\0b", 3));
  EXPECT_EQ(f->get_str("t.str_empty"), "");
  EXPECT_EQ(f->get_str_array("t.arr_str"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f->get_int_array("t.arr_i32"), (std::vector<int64_t>{-1, 2, INT32_MIN}));
  EXPECT_EQ(f->get_int_array("t.arr_u32"), (std::vector<int64_t>{0, UINT32_MAX}));
  EXPECT_EQ(f->get_float_array("t.arr_f32"), (std::vector<double>{0.5, -2.0}));
  EXPECT_EQ(f->get_float_array("t.arr_i32"), (std::vector<double>{-1, 2, INT32_MIN}));
  EXPECT_EQ(f->find("t.u8")->type, GgufType::UINT8);
  EXPECT_EQ(f->get_u32("t.u8"), 200u);
  EXPECT_EQ(f->get_i64("t.i8"), -100);
  EXPECT_EQ(f->get_u32("t.u16"), 65535u);
  EXPECT_EQ(f->get_i64("t.i16"), -30000);
  EXPECT_EQ(f->get_i64("t.i64"), INT64_MIN);
  EXPECT_EQ(f->get_u64("t.u64_max"), UINT64_MAX);
  EXPECT_EQ(f->find("t.f64")->f, 0.1);
  EXPECT_EQ(f->get_f32("t.f64"), 0.1f);
  EXPECT_EQ(f->get_f32("t.u32"), 4000000000.0f);  // integers convert to float
  EXPECT_EQ(f->get_int_array("t.arr_u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f->get_int_array("t.arr_i8"), (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ(f->get_int_array("t.arr_u16"), (std::vector<int64_t>{65535}));
  EXPECT_EQ(f->get_int_array("t.arr_i16"), (std::vector<int64_t>{-32768}));
  EXPECT_EQ(f->get_int_array("t.arr_i64"), (std::vector<int64_t>{INT64_MIN, INT64_MAX}));
  EXPECT_EQ(uint64_t(f->get_int_array("t.arr_u64")[1]), (uint64_t(1) << 63) + 5);
  EXPECT_EQ(f->get_float_array("t.arr_u64")[1], double((uint64_t(1) << 63) + 5));
  EXPECT_EQ(f->get_int_array("t.arr_bool"), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(f->get_float_array("t.arr_f64"), (std::vector<double>{0.1, -1e300}));
  EXPECT_TRUE(f->get_str_array("t.arr_str_empty").empty());
  EXPECT_EQ(f->find("t.arr_f32_empty")->elem_type, GgufType::FLOAT32);
  EXPECT_EQ(f->find("t.arr_str")->array_size(), 3u);
  EXPECT_EQ(f->find("t.arr_f64")->array_size(), 2u);
  EXPECT_EQ(f->find("t.arr_bool")->array_size(), 3u);
  EXPECT_EQ(f->find("t.u32")->array_size(), 0u);
}

TEST(Gguf, GettersRejectMissingWrongTypeAndOutOfRange) {
  TempDir dir;
  GgufWriter w;
  set_all_types(w);
  const std::string path = dir.file("meta.gguf");
  w.write(path);
  auto f = GgufFile::open(path);
  auto error_of = [](auto fn) -> std::string {
    try {
      fn();
    } catch (const ds4::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(error_of([&] { f->get_u32("nope"); }), path + ": metadata key 'nope' missing");
  EXPECT_EQ(error_of([&] { f->get_u32("t.str"); }),
            path + ": metadata key 't.str' has type str, expected integer");
  EXPECT_EQ(error_of([&] { f->get_u32("t.i8"); }),
            path + ": metadata key 't.i8' value -100 does not fit in u32");
  EXPECT_EQ(error_of([&] { f->get_u32("t.u64"); }),
            path + ": metadata key 't.u64' value 1099511627776 does not fit in u32");
  EXPECT_EQ(error_of([&] { f->get_i64("t.u64_max"); }),
            path + ": metadata key 't.u64_max' value 18446744073709551615 does not fit in i64");
  EXPECT_EQ(error_of([&] { f->get_u64("t.i64"); }),
            path + ": metadata key 't.i64' value -9223372036854775808 does not fit in u64");
  EXPECT_EQ(error_of([&] { f->get_bool("t.u32"); }),
            path + ": metadata key 't.u32' has type u32, expected bool");
  EXPECT_EQ(error_of([&] { f->get_str_array("t.arr_i32"); }),
            path + ": metadata key 't.arr_i32' has type array of i32, expected array of str");
  EXPECT_THROW(f->get_u32("t.bool"), ds4::Error);  // bool is not an integer
  EXPECT_THROW(f->get_f32("t.str"), ds4::Error);
  EXPECT_THROW(f->get_str("t.u32"), ds4::Error);
  EXPECT_THROW(f->get_int_array("t.arr_f32"), ds4::Error);
  EXPECT_THROW(f->get_float_array("t.arr_str"), ds4::Error);
  EXPECT_THROW(f->get_int_array("t.u32"), ds4::Error);
  EXPECT_EQ(f->get_u32_or("nope", 7), 7u);
  EXPECT_EQ(f->get_u32_or("t.u8", 7), 200u);
  EXPECT_EQ(f->get_f32_or("nope", 2.5f), 2.5f);
  EXPECT_TRUE(f->get_bool_or("nope", true));
  EXPECT_EQ(f->get_str_or("nope", "d"), "d");
  EXPECT_EQ(f->get_str_or("t.str_empty", "d"), "");
  EXPECT_THROW(f->get_u32_or("t.str", 7), ds4::Error);  // present but wrong type
  EXPECT_THROW(f->get_str_or("t.u32", "d"), ds4::Error);
  EXPECT_EQ(error_of([&] { f->tensor("nope"); }), path + ": tensor 'nope' missing");
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
}

TEST(Gguf, SetReplacesInPlace) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("k1", 1);
  w.set_u32("k2", 2);
  w.set_str("k1", "replaced");
  w.set_u32("k3", 3);
  w.write(dir.file("r.gguf"));
  auto f = GgufFile::open(dir.file("r.gguf"));
  ASSERT_EQ(f->metadata().size(), 3u);
  EXPECT_EQ(f->metadata()[0].first, "k1");
  EXPECT_EQ(f->get_str("k1"), "replaced");
  EXPECT_EQ(f->metadata()[1].first, "k2");
  EXPECT_EQ(f->metadata()[2].first, "k3");
}

struct TensorCase {
  std::string name;
  std::vector<int64_t> ne;
  QType type;
  size_t nbytes;
};

// F32, F16, Q8_0 (34-byte blocks of 32), I32 and a 4-D tensor; the last one is 32 bytes so the
// file ends exactly at its data (no trailing padding), which the truncation test relies on.
const std::vector<TensorCase>& tensor_cases() {
  static const std::vector<TensorCase> cases = {
      {"blk.0.f32", {3, 5}, QType::F32, 3 * 5 * 4},
      {"blk.0.f16", {8, 2}, QType::F16, 8 * 2 * 2},
      {"blk.0.q8_0", {64, 3}, QType::Q8_0, 2 * 34 * 3},
      {"blk.0.i32", {7}, QType::I32, 7 * 4},
      {"blk.0.four_d", {2, 1, 3, 2}, QType::F32, 2 * 3 * 2 * 4},
      {"tail", {8}, QType::F32, 32},
  };
  return cases;
}

void write_sample(const std::string& path) {
  GgufWriter w;
  w.set_str("general.architecture", "deepseek4");
  w.set_u32("deepseek4.block_count", 4);
  w.set_arr_str("tokenizer.ggml.tokens", {"a", "bc"});
  w.set_arr_i32("deepseek4.attention.compress_ratios", {0, 0, 4, 128});
  uint8_t seed = 1;
  for (const TensorCase& c : tensor_cases())
    w.add_tensor(c.name, c.ne, c.type, pattern(c.nbytes, seed++).data(), c.nbytes);
  EXPECT_EQ(w.tensor_count(), tensor_cases().size());
  w.write(path);
}

TEST(Gguf, TensorRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("t.gguf");
  write_sample(path);
  auto f = GgufFile::open(path);
  ASSERT_EQ(f->tensors().size(), tensor_cases().size());
  uint8_t seed = 1;
  for (size_t k = 0; k < tensor_cases().size(); ++k) {
    const TensorCase& c = tensor_cases()[k];
    const ds4::GgufTensor& t = f->tensors()[k];
    SCOPED_TRACE(c.name);
    EXPECT_EQ(t.name, c.name);  // file order kept
    EXPECT_EQ(&f->tensor(c.name), &t);
    EXPECT_EQ(t.ne, c.ne);
    EXPECT_EQ(t.type, c.type);
    EXPECT_EQ(t.nbytes, c.nbytes);
    EXPECT_EQ(t.nbytes, ds4::qtype_row_bytes(c.type, c.ne[0]) * size_t(t.rows()));
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(size_t(t.data - f->bytes()) % 32, 0u);
    std::vector<uint8_t> want = pattern(c.nbytes, seed++);
    EXPECT_EQ(std::memcmp(t.data, want.data(), c.nbytes), 0);
  }
  EXPECT_EQ(f->tensor("blk.0.q8_0").nelements(), 192);
  EXPECT_EQ(f->tensor("blk.0.q8_0").rows(), 3);
  EXPECT_EQ(f->tensor("blk.0.four_d").rows(), 6);
  EXPECT_EQ(f->tensor("blk.0.i32").rows(), 1);
  const ds4::GgufTensor& tail = f->tensor("tail");
  EXPECT_EQ(tail.data + tail.nbytes, f->bytes() + f->file_size());
}

// Copying every key and tensor of a file through set_value/add_tensor reproduces it exactly.
TEST(Gguf, CopyThroughWriterIsByteIdentical) {
  TempDir dir;
  GgufWriter w0;
  set_all_types(w0);
  uint8_t seed = 1;
  for (const TensorCase& c : tensor_cases())
    w0.add_tensor(c.name, c.ne, c.type, pattern(c.nbytes, seed++).data(), c.nbytes);
  w0.write(dir.file("a.gguf"));
  auto a = GgufFile::open(dir.file("a.gguf"));
  GgufWriter w1;
  for (const auto& [key, value] : a->metadata()) w1.set_value(key, value);
  for (const auto& t : a->tensors()) w1.add_tensor(t.name, t.ne, t.type, t.data, t.nbytes);
  w1.write(dir.file("b.gguf"));
  EXPECT_EQ(read_file(dir.file("a.gguf")), read_file(dir.file("b.gguf")));
}

// spill_tensors_near: the same bytes as the in-memory writer, a tensor larger than one 16 MiB copy
// piece included, and nothing visible in the folder before write() (the scratch file is unnamed).
TEST(Gguf, SpilledTensorsWriteTheSameBytes) {
  TempDir dir;
  const size_t big = (size_t{20} << 20) + 12;  // F32 [5M + 3]
  const std::vector<uint8_t> big_data = pattern(big, 77);
  auto fill = [&](GgufWriter& w) {
    set_all_types(w);
    uint8_t seed = 1;
    for (const TensorCase& c : tensor_cases())
      w.add_tensor(c.name, c.ne, c.type, pattern(c.nbytes, seed++).data(), c.nbytes);
    w.add_tensor("big", {int64_t(big / 4)}, QType::F32, big_data.data(), big);
  };
  GgufWriter mem;
  fill(mem);
  mem.write(dir.file("mem.gguf"));
  const std::string sub = dir.file("spill");
  std::filesystem::create_directories(sub);
  GgufWriter w;
  w.spill_tensors_near(sub + "/s.gguf");
  fill(w);
  EXPECT_TRUE(std::filesystem::is_empty(sub));
  w.write(sub + "/s.gguf");
  EXPECT_EQ(read_file(dir.file("mem.gguf")), read_file(sub + "/s.gguf"));
  EXPECT_THROW(GgufWriter().spill_tensors_near(dir.file("no/such/folder/x.gguf")), ds4::Error);
}

// add_zero_tensor: the reader sees zero bytes where the writer wrote none (a hole in the middle and
// one at the end, whose length the writer must set), and the file takes no disk for them.
TEST(Gguf, ZeroTensorsAreHolesThatReadAsZero) {
  TempDir dir;
  const size_t big = size_t{64} << 20;  // 64 MiB of F32 zeros
  const std::vector<uint8_t> head = pattern(96, 5), mid = pattern(40, 9);
  GgufWriter w;
  w.set_str("general.architecture", "test");
  w.add_tensor("head", {24}, QType::F32, head.data(), head.size());
  w.add_zero_tensor("hole", {int64_t(big / 4)}, QType::F32);
  w.add_tensor("mid", {10}, QType::F32, mid.data(), mid.size());
  w.add_zero_tensor("tail", {64, 3}, QType::Q8_0);
  EXPECT_THROW(w.add_zero_tensor("hole", {8}, QType::F32), ds4::Error);     // a duplicate name
  EXPECT_THROW(w.add_zero_tensor("odd", {31}, QType::Q8_0), ds4::Error);    // not whole blocks
  w.write(dir.file("z.gguf"));
  const auto f = GgufFile::open(dir.file("z.gguf"));
  EXPECT_EQ(std::memcmp(f->tensor("head").data, head.data(), head.size()), 0);
  EXPECT_EQ(std::memcmp(f->tensor("mid").data, mid.data(), mid.size()), 0);
  for (const char* name : {"hole", "tail"}) {
    const ds4::GgufTensor& t = f->tensor(name);
    EXPECT_TRUE(std::all_of(t.data, t.data + t.nbytes, [](uint8_t b) { return b == 0; })) << name;
  }
  EXPECT_EQ(f->tensor("tail").nbytes, size_t{3} * 2 * 34);
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("z.gguf").c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{1} << 20) << "the hole took disk blocks";
}

// add_generated_tensor: the bytes a filler gives, piece by piece (a 40 MiB tensor is 2 pieces of
// whole rows), are those add_tensor writes; a filler that throws leaves no file.
TEST(Gguf, GeneratedTensorsWriteTheSameBytes) {
  TempDir dir;
  const int64_t ne0 = 32, rows = (int64_t{40} << 20) / 34;  // Q8_0 rows of 34 bytes
  const size_t row_bytes = ds4::qtype_row_bytes(QType::Q8_0, ne0);
  std::vector<uint8_t> data(row_bytes * static_cast<size_t>(rows));
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  const std::vector<uint8_t> small = pattern(40, 3);
  GgufWriter a, b;
  for (GgufWriter* w : {&a, &b}) {
    w->set_str("general.architecture", "test");
    w->add_tensor("small", {10}, QType::F32, small.data(), small.size());
  }
  a.add_tensor("gen", {ne0, rows}, QType::Q8_0, data.data(), data.size());
  std::vector<std::pair<int64_t, int64_t>> calls;
  b.add_generated_tensor("gen", {ne0, rows}, QType::Q8_0, [&](int64_t r0, int64_t n, uint8_t* dst) {
    calls.emplace_back(r0, n);
    std::memcpy(dst, data.data() + row_bytes * static_cast<size_t>(r0), row_bytes * static_cast<size_t>(n));
  });
  b.add_tensor("after", {10}, QType::F32, small.data(), small.size());
  a.add_tensor("after", {10}, QType::F32, small.data(), small.size());
  EXPECT_THROW(b.add_generated_tensor("gen", {32}, QType::Q8_0, [](int64_t, int64_t, uint8_t*) {}), ds4::Error);
  EXPECT_THROW(b.add_generated_tensor("odd", {31}, QType::Q8_0, [](int64_t, int64_t, uint8_t*) {}), ds4::Error);
  EXPECT_THROW(b.add_generated_tensor("none", {32}, QType::Q8_0, nullptr), ds4::Error);
  a.write(dir.file("a.gguf"));
  b.write(dir.file("b.gguf"));
  EXPECT_EQ(read_file(dir.file("a.gguf")), read_file(dir.file("b.gguf")));
  ASSERT_GE(calls.size(), 2u);  // in order, whole rows, covering every row once
  int64_t next = 0;
  for (const auto& [r0, n] : calls) {
    EXPECT_EQ(r0, next);
    next = r0 + n;
  }
  EXPECT_EQ(next, rows);

  GgufWriter c;
  c.set_str("general.architecture", "test");
  c.add_generated_tensor("gen", {32, 4}, QType::Q8_0, [](int64_t, int64_t, uint8_t*) { ds4::fail("filler broke"); });
  EXPECT_THROW(c.write(dir.file("c.gguf")), ds4::Error);
  EXPECT_EQ(dir.entries(), 2u) << "a failed write leaves nothing behind";
}

TEST(Gguf, CustomAlignmentIsHonoured) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("general.alignment", 64);
  w.add_tensor("a", {3}, QType::F32, pattern(12, 1).data(), 12);
  w.add_tensor("b", {5}, QType::F32, pattern(20, 2).data(), 20);
  w.write(dir.file("a64.gguf"));
  auto f = GgufFile::open(dir.file("a64.gguf"));
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->tensor("b").offset, 64u);
  EXPECT_EQ(size_t(f->tensor("a").data - f->bytes()) % 64, 0u);
  EXPECT_EQ(std::memcmp(f->tensor("b").data, pattern(20, 2).data(), 20), 0);
}

// ---------------------------------------------------------------------------------------------
// Defective files
// ---------------------------------------------------------------------------------------------

TEST(GgufBad, EveryTruncationIsAnError) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  write_sample(good);
  const std::vector<uint8_t> bytes = read_file(good);
  ASSERT_GT(bytes.size(), 300u);
  const std::string cut = dir.file("cut.gguf");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_file(cut, std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(n)));
    EXPECT_THROW(GgufFile::open(cut), ds4::Error) << "cut at " << n;
  }
}

TEST(GgufBad, EveryTruncationOfMetadataNamesTheKey) {
  TempDir dir;
  Raw r;
  r.header(0, 1).str("general.name").u32(uint32_t(GgufType::STRING)).str("tiny model");
  const std::string path = dir.file("x.gguf");
  const size_t key_end = 24 + 8 + 12;  // header + key length + key bytes
  for (size_t n = key_end; n < r.b.size(); ++n) {
    write_file(path, std::vector<uint8_t>(r.b.begin(), r.b.begin() + long(n)));
    EXPECT_EQ(open_error(path), path + ": truncated while reading metadata key 'general.name'");
  }
  write_file(path, std::vector<uint8_t>(r.b.begin(), r.b.begin() + 40));
  EXPECT_EQ(open_error(path), path + ": truncated while reading metadata key #0 name");
  write_file(path, r.b);
  EXPECT_EQ(GgufFile::open(path)->get_str("general.name"), "tiny model");
}

TEST(GgufBad, Header) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  write_file(path, {});
  EXPECT_EQ(open_error(path), path + ": not a GGUF file (bad magic)");
  write_file(path, {'G', 'G', 'U'});
  EXPECT_EQ(open_error(path), path + ": not a GGUF file (bad magic)");
  Raw bad_magic;
  bad_magic.header(0, 0).b[3] = 'X';
  write_file(path, bad_magic.b);
  EXPECT_EQ(open_error(path), path + ": not a GGUF file (bad magic)");
  for (uint32_t version : {1u, 2u, 4u, 0xFFFFFFFFu}) {
    write_file(path, Raw().header(0, 0, version).b);
    EXPECT_EQ(open_error(path), path + ": unsupported GGUF version " + std::to_string(version) +
                                    " (only v3 is supported)");
  }
  write_file(path, Raw().header(0, 0).b);
  EXPECT_NO_THROW(GgufFile::open(path));  // empty but valid
  Raw short_header;
  short_header.header(0, 0).b.resize(20);
  write_file(path, short_header.b);
  EXPECT_EQ(open_error(path), path + ": truncated while reading header");
  EXPECT_NE(open_error(dir.file("missing.gguf")).find("cannot open"), std::string::npos);
  fs::create_directory(dir.file("d.gguf"));
  EXPECT_EQ(open_error(dir.file("d.gguf")), dir.file("d.gguf") + ": not a regular file");
}

TEST(GgufBad, AbsurdCounts) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  write_file(path, Raw().header(uint64_t(1) << 60, 0).zeros(100).b);
  EXPECT_EQ(open_error(path), path + ": implausible tensor count 1152921504606846976 for a file "
                                     "of 124 bytes");
  write_file(path, Raw().header(0, uint64_t(1) << 60).zeros(100).b);
  EXPECT_NE(open_error(path).find("implausible metadata count 1152921504606846976"),
            std::string::npos);
  write_file(path, Raw().header(UINT64_MAX, UINT64_MAX).b);
  EXPECT_NE(open_error(path).find("implausible"), std::string::npos);
}

TEST(GgufBad, Metadata) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  auto expect = [&](const Raw& r, const std::string& what) {
    write_file(path, r.b);
    EXPECT_EQ(open_error(path), path + ": " + what);
  };
  expect(Raw().header(0, 1).str("general.name").u32(8).u64(uint64_t(1) << 40).zeros(8),
         "truncated while reading metadata key 'general.name'");
  expect(Raw().header(0, 1).u64(uint64_t(1) << 40).zeros(16),
         "truncated while reading metadata key #0 name");
  expect(Raw().header(0, 1).u64(UINT64_MAX).zeros(16),
         "truncated while reading metadata key #0 name");
  expect(Raw().header(0, 1).str("k").u32(13).u32(0), "unknown value type 13 for metadata key 'k'");
  expect(Raw().header(0, 1).str("k").u32(9).u32(42).u64(0),
         "unknown array element type 42 for metadata key 'k'");
  expect(Raw().header(0, 1).str("k").u32(9).u32(9).u64(0),
         "metadata key 'k' is a nested array (not supported)");
  expect(Raw().header(0, 1).str("k").u32(9).u32(4).u64(uint64_t(1) << 62).zeros(16),
         "array of 4611686018427387904 elements for metadata key 'k' runs past end of file "
         "(size 65)");
  expect(Raw().header(0, 1).str("k").u32(9).u32(8).u64(3).str("a").u64(99).zeros(10),
         "truncated while reading metadata key 'k'");
  expect(Raw().header(0, 2).kv_u32("k", 1).kv_u32("k", 2), "duplicate metadata key 'k'");
  expect(Raw().header(0, 1).str("b").u32(7).put<uint8_t>(2), "bool value 2 in metadata key 'b'");
  expect(Raw().header(0, 1).kv_u32("general.alignment", 48),
         "general.alignment 48 is not a power of two");
  expect(Raw().header(0, 1).kv_u32("general.alignment", 0),
         "general.alignment 0 is not a power of two");
  expect(Raw().header(0, 1).str("general.alignment").u32(10).u64(32),
         "metadata key 'general.alignment' has type u64, expected u32");
}

TEST(GgufBad, Tensors) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  const uint32_t f32 = 0, q8_0 = 8;
  // One F32 tensor info plus `data` bytes of data section.
  auto one = [](const std::vector<uint64_t>& ne, uint32_t type, uint64_t offset, size_t data) {
    Raw r;
    r.header(1, 0).tensor("foo", ne, type, offset).pad().zeros(data);
    return r;
  };
  auto expect = [&](const Raw& r, const std::string& what) {
    write_file(path, r.b);
    EXPECT_EQ(open_error(path), path + ": " + what);
  };
  write_file(path, one({4}, f32, 0, 16).b);
  EXPECT_NO_THROW(GgufFile::open(path));
  expect(one({4}, 99, 0, 16), "unknown tensor type 99 for tensor 'foo'");
  expect(one({4}, 15 + 1000, 0, 16), "unknown tensor type 1015 for tensor 'foo'");
  expect(one({4}, f32, 4, 16), "tensor 'foo' offset 4 is not aligned to 32");
  expect(one({33, 2}, q8_0, 0, 200),
         "tensor 'foo' ne[0] = 33 is not a multiple of the " +
             std::string(ds4::qtype_info(QType::Q8_0).name) + " block size 32");
  // Header 24 + name 8+3 + n_dims 4 + ne 8 + type 4 + offset 8 = 59, padded to 64.
  expect(one({1024}, f32, 0, 100), "tensor 'foo' data [64, 4160) runs past end of file (size 164)");
  expect(one({4}, f32, 96, 100), "tensor 'foo' data [160, 176) runs past end of file (size 164)");
  expect(one({4}, f32, UINT64_MAX - 31, 100),
         "tensor 'foo' data at offset 18446744073709551584 runs past end of file (size 164)");
  expect(one({}, f32, 0, 16), "tensor 'foo' has 0 dimensions (expected 1..4)");
  expect(one({1, 1, 1, 1, 1}, f32, 0, 16), "tensor 'foo' has 5 dimensions (expected 1..4)");
  expect(one({4, uint64_t(1) << 63}, f32, 0, 16), "tensor 'foo' has negative dimension ne[1]");
  expect(one({uint64_t(1) << 40, uint64_t(1) << 40}, f32, 0, 16),
         "tensor 'foo' element count overflows");
  expect(one({uint64_t(1) << 62}, f32, 0, 16), "tensor 'foo' byte size overflows");
  Raw no_data;
  no_data.header(1, 0).tensor("foo", {4}, f32, 0);
  expect(no_data, "truncated before the data section (starts at 64, size 59)");
  Raw dup;
  dup.header(2, 0).tensor("foo", {4}, f32, 0).tensor("foo", {4}, f32, 32).pad().zeros(64);
  expect(dup, "duplicate tensor 'foo'");
  Raw overlap;
  overlap.header(2, 0).tensor("a", {16}, f32, 0).tensor("b", {16}, f32, 32).pad().zeros(128);
  expect(overlap, "tensor 'b' data [32, 96) overlaps tensor 'a' data [0, 64)");
  Raw trunc_name;
  trunc_name.header(1, 0).u64(1000).zeros(40);
  expect(trunc_name, "truncated while reading tensor info #0 name");
  Raw trunc_info;
  trunc_info.header(1, 0).str("foo").u32(2).u64(4).zeros(10);
  expect(trunc_info, "truncated while reading tensor 'foo'");
  // Names are made printable so that every message stays on one line.
  Raw odd_name;
  odd_name.header(1, 0).tensor("a\nb", {4}, 99, 0).pad().zeros(16);
  expect(odd_name, "unknown tensor type 99 for tensor 'a\\x0ab'");
  // Zero-sized tensors are fine, even sharing an offset.
  Raw empty;
  empty.header(2, 0).tensor("a", {0, 4}, f32, 0).tensor("b", {4, 0}, f32, 0).pad();
  write_file(path, empty.b);
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->tensor("a").nbytes, 0u);
  EXPECT_EQ(f->tensor("b").nelements(), 0);
}

// Deterministic byte-flip fuzz: every mutant either opens (with all tensor data inside the
// mapping) or throws ds4::Error. Run under ASAN to catch any out-of-bounds read.
TEST(GgufBad, ByteFlipFuzzNeverCrashes) {
  TempDir dir;
  const std::string good = dir.file("good.gguf");
  write_sample(good);
  const std::vector<uint8_t> bytes = read_file(good);
  const std::string path = dir.file("fuzz.gguf");
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> m = bytes;
    // Mutate the header region mostly: that is where the parser's decisions are.
    size_t limit = iter % 4 == 0 ? m.size() : std::min<size_t>(m.size(), 400);
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t at = rng() % limit;
      m[at] = iter % 3 == 0 ? uint8_t(rng()) : uint8_t(m[at] ^ (1u << (rng() % 8)));
    }
    write_file(path, m);
    try {
      auto f = GgufFile::open(path);
      ++opened;
      for (const auto& t : f->tensors()) {
        ASSERT_GE(t.data, f->bytes());
        ASSERT_LE(t.data + t.nbytes, f->bytes() + f->file_size());
      }
    } catch (const ds4::Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
  EXPECT_GT(opened, 0);  // flips inside tensor data keep the file valid
}

// ---------------------------------------------------------------------------------------------
// Writer failures
// ---------------------------------------------------------------------------------------------

TEST(GgufWriterBad, RejectsBadTensors) {
  GgufWriter w;
  std::vector<uint8_t> buf(1024);
  w.add_tensor("a", {4}, QType::F32, buf.data(), 16);
  EXPECT_THROW(w.add_tensor("a", {4}, QType::F32, buf.data(), 16), ds4::Error);
  EXPECT_THROW(w.add_tensor("b", {4}, QType::F32, buf.data(), 15), ds4::Error);
  EXPECT_THROW(w.add_tensor("c", {33}, QType::Q8_0, buf.data(), 34), ds4::Error);
  EXPECT_THROW(w.add_tensor("d", {}, QType::F32, buf.data(), 0), ds4::Error);
  EXPECT_THROW(w.add_tensor("e", {1, 1, 1, 1, 1}, QType::F32, buf.data(), 4), ds4::Error);
  EXPECT_THROW(w.add_tensor("f", {-1}, QType::F32, buf.data(), 0), ds4::Error);
  EXPECT_THROW(w.add_tensor("g", {4}, QType(99), buf.data(), 16), ds4::Error);
  EXPECT_THROW(w.add_tensor("h", {INT64_MAX, INT64_MAX}, QType::F32, buf.data(), 16),
               ds4::Error);
  EXPECT_EQ(w.tensor_count(), 1u);
  GgufValue nested;
  nested.type = GgufType::ARRAY;
  nested.elem_type = GgufType::ARRAY;
  EXPECT_THROW(w.set_value("n", nested), ds4::Error);
  GgufValue unknown;
  unknown.type = GgufType(77);
  EXPECT_THROW(w.set_value("u", unknown), ds4::Error);
}

TEST(GgufWriterBad, MissingDirectoryLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/x.gguf");
  GgufWriter w;
  w.set_u32("k", 1);
  try {
    w.write(path);
    ADD_FAILURE() << "no error";
  } catch (const ds4::Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(dir.entries(), 0u);
}

TEST(GgufWriterBad, BadAlignmentKeyIsRejected) {
  TempDir dir;
  GgufWriter w;
  w.set_u32("general.alignment", 24);
  EXPECT_THROW(w.write(dir.file("x.gguf")), ds4::Error);
  EXPECT_EQ(dir.entries(), 0u);
}

// An I/O error mid-write (here the file-size limit standing in for a full disk) removes the
// temporary file and leaves an existing file at the destination untouched.
TEST(GgufWriterBad, IoErrorLeavesNoTmpAndKeepsOldFile) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  write_file(path, {'o', 'l', 'd'});
  GgufWriter w;
  std::vector<uint8_t> big(1 << 20, 0x5a);
  w.add_tensor("big", {int64_t(big.size() / 4)}, QType::F32, big.data(), big.size());

  struct sigaction ignore = {}, previous = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &previous), 0);  // get EFBIG instead of a signal
  rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit small = old_limit;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    w.write(path);
  } catch (const ds4::Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  sigaction(SIGXFSZ, &previous, nullptr);

  EXPECT_EQ(message.rfind(path + ": write failed: ", 0), 0u) << message;
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(read_file(path), (std::vector<uint8_t>{'o', 'l', 'd'}));
  EXPECT_EQ(dir.entries(), 1u);
}

// Writers racing to create the same file (test programs generating a shared model on first use)
// must each rename a complete file: with one shared "<path>.tmp", one writer renamed the other's
// half-written bytes into place (the cause of a CI failure in a clean build folder).
TEST(GgufWriter, ConcurrentWritersOfOnePathEachRenameAWholeFile) {
  TempDir dir;
  const std::string path = dir.file("shared.gguf");
  GgufWriter w;
  w.set_u32("k", 7);
  std::vector<uint8_t> big(4 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 131 + 7);
  w.add_tensor("big", {int64_t(big.size() / 4)}, QType::F32, big.data(), big.size());
  for (int round = 0; round < 4; ++round) {
    std::vector<std::thread> writers;
    std::atomic<int> failures{0};
    for (int t = 0; t < 6; ++t)
      writers.emplace_back([&] {
        try {
          w.write(path);
        } catch (const ds4::Error&) {
          ++failures;
        }
      });
    for (auto& t : writers) t.join();
    EXPECT_EQ(failures.load(), 0);
    auto f = GgufFile::open(path);
    ASSERT_EQ(f->tensors().size(), 1u);
    EXPECT_EQ(std::memcmp(f->tensor("big").data, big.data(), big.size()), 0);
    EXPECT_EQ(dir.entries(), 1u) << "a temporary was left behind";
  }
}

TEST(GgufWriterBad, RenameFailureRemovesTmp) {
  TempDir dir;
  const std::string path = dir.file("x.gguf");
  fs::create_directories(path + "/occupied");  // a non-empty directory cannot be replaced
  GgufWriter w;
  w.set_u32("k", 1);
  EXPECT_THROW(w.write(path), ds4::Error);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_TRUE(fs::is_directory(path));
}

}  // namespace
