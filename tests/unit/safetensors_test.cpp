// Tests for the safetensors reader (ds4/safetensors.h): hand-built files (header bytes written
// here), every class of defect with its one-line message, every truncation, and the real HF
// fixture tests/fixtures/hf-tiny/model.safetensors.
#include "ds4/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ds4/error.h"
#include "../support/errors.h"
#include "../support/scratch.h"

namespace {

namespace fs = std::filesystem;
using ds4::SafetensorsFile;

// A fresh folder per test, removed with its contents at scope exit.
struct TempDir : ds4::testing::TempDir {
  TempDir() : ds4::testing::TempDir("ds4_st_test") {}
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// u64 little-endian header length + header + data.
std::string make_file(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string open_error(const std::string& path) {
  return ds4::testing::open_error_of(path, [](const std::string& p) { SafetensorsFile::open(p); });
}

// A valid file with one tensor of each convertible dtype; the last tensor ends the file.
std::string sample_file() {
  const std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f};
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x3800, 0x0000};  // 1, -2, 0.5, 0
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC040};                 // 1, -3
  const std::vector<double> f64 = {0.1, -1e10};
  const std::vector<int64_t> i64 = {5, -6, INT64_MAX, 0};
  const std::vector<int32_t> i32 = {-1, 2};
  const std::vector<int16_t> i16 = {-300};
  const std::vector<int8_t> i8 = {-5, 6};
  const std::vector<uint8_t> u8 = {200, 1, 0};
  std::string data = raw(f32) + raw(f16) + raw(bf16) + raw(f64) + raw(i64) + raw(i32) +
                     raw(i16) + raw(i8) + raw(u8);
  std::string header = R"({"__metadata__":{"format":"pt","note":"x"},)"
                       R"("w.f32":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                       R"("w.f16":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},)"
                       R"("w.bf16":{"dtype":"BF16","shape":[2,1],"data_offsets":[32,36]},)"
                       R"("w.f64":{"dtype":"F64","shape":[2],"data_offsets":[36,52]},)"
                       R"("w.i64":{"dtype":"I64","shape":[2,2],"data_offsets":[52,84]},)"
                       R"("w.i32":{"dtype":"I32","shape":[2],"data_offsets":[84,92]},)"
                       R"("w.i16":{"dtype":"I16","shape":[],"data_offsets":[92,94]},)"
                       R"("w.empty":{"dtype":"F32","shape":[0,3],"data_offsets":[94,94]},)"
                       R"("w.i8":{"dtype":"I8","shape":[2],"data_offsets":[94,96]},)"
                       R"("w.u8":{"dtype":"U8","shape":[3],"data_offsets":[96,99]}})";
  header += "   ";  // the format allows space padding after the JSON
  return make_file(header, data);
}

TEST(Safetensors, ReadsHandBuiltFile) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  write_file(path, sample_file());
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->path(), path);
  ASSERT_EQ(f->tensors().size(), 10u);
  EXPECT_EQ(f->tensors()[0].name, "w.f32");  // header order kept
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "x");

  const ds4::SafeTensor& w = f->get("w.f32");
  EXPECT_EQ(w.dtype, "F32");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w.nelements(), 6);
  EXPECT_EQ(w.nbytes, 24u);
  EXPECT_EQ(w.to_f32(), (std::vector<float>{1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f}));
  EXPECT_EQ(f->get("w.f16").to_f32(), (std::vector<float>{1.0f, -2.0f, 0.5f, 0.0f}));
  EXPECT_EQ(f->get("w.bf16").to_f32(), (std::vector<float>{1.0f, -3.0f}));
  EXPECT_EQ(f->get("w.f64").to_f32(), (std::vector<float>{0.1f, -1e10f}));
  EXPECT_EQ(f->get("w.i64").to_i64(), (std::vector<int64_t>{5, -6, INT64_MAX, 0}));
  EXPECT_EQ(f->get("w.i32").to_i64(), (std::vector<int64_t>{-1, 2}));
  EXPECT_EQ(f->get("w.i16").nelements(), 1);  // shape [] is a scalar
  EXPECT_EQ(f->get("w.i16").to_i64(), (std::vector<int64_t>{-300}));
  EXPECT_EQ(f->get("w.i8").to_i64(), (std::vector<int64_t>{-5, 6}));
  EXPECT_EQ(f->get("w.u8").to_i64(), (std::vector<int64_t>{200, 1, 0}));
  EXPECT_TRUE(f->get("w.empty").to_f32().empty());
  EXPECT_THROW(f->get("w.f32").to_i64(), ds4::Error);
  EXPECT_THROW(f->get("w.i64").to_f32(), ds4::Error);
  EXPECT_EQ(f->find("nope"), nullptr);
  try {
    f->get("nope");
    ADD_FAILURE();
  } catch (const ds4::Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": tensor 'nope' missing");
  }
}

TEST(Safetensors, EveryTruncationIsAnError) {
  TempDir dir;
  const std::string bytes = sample_file();
  const std::string path = dir.file("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_file(path, bytes.substr(0, n));
    EXPECT_THROW(SafetensorsFile::open(path), ds4::Error) << "cut at " << n;
  }
}

TEST(Safetensors, RejectsDefects) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  auto expect = [&](const std::string& header, size_t data_bytes, const std::string& what) {
    write_file(path, make_file(header, std::string(data_bytes, '\0')));
    EXPECT_EQ(open_error(path), path + ": " + what) << header;
  };
  // One tensor 't' with the given JSON body.
  auto one = [](const std::string& body) { return R"({"t":{)" + body + "}}"; };

  write_file(path, make_file(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"),
                             std::string(8, '\0')));
  EXPECT_NO_THROW(SafetensorsFile::open(path));

  expect(one(R"("dtype":"F31","shape":[2],"data_offsets":[0,8])"), 8,
         "tensor 't' has unknown dtype 'F31'");
  expect(one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), 8,
         "tensor 't' shape [3] of F32 needs 12 bytes but data_offsets span 8");
  expect(one(R"("dtype":"F4","shape":[3],"data_offsets":[0,2])"), 2,
         "tensor 't' shape [3] of F4 needs a fractional number of bytes but data_offsets span 2");
  expect(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"), 7,
         "tensor 't' data [0, 8) runs past end of data section (size 7)");
  expect(one(R"("dtype":"F32","shape":[0],"data_offsets":[8,0])"), 8,
         "tensor 't' data_offsets [8, 0) end before begin");
  expect(one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), 8,
         "tensor 't' shape entry -2 is not a non-negative integer");
  expect(one(R"("dtype":"F32","shape":[2.5],"data_offsets":[0,8])"), 8,
         "tensor 't' shape entry 2.5 is not a non-negative integer");
  expect(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,"8"])"), 8,
         "tensor 't' data_offsets entry \"8\" is not a non-negative integer");
  expect(one(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"), 8,
         "tensor 't' element count overflows");
  expect(one(R"("dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8])"), 8,
         "tensor 't' byte size overflows");
  expect(one(R"("dtype":"F32","shape":[2])"), 8, "tensor 't' has no 'data_offsets' pair");
  expect(one(R"("dtype":"F32","shape":[2],"data_offsets":[0])"), 8,
         "tensor 't' has no 'data_offsets' pair");
  expect(one(R"("shape":[2],"data_offsets":[0,8])"), 8, "tensor 't' has no string 'dtype'");
  expect(one(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), 8,
         "tensor 't' has no array 'shape'");
  expect(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1)"), 8,
         "tensor 't' has unknown field 'extra'");
  expect(R"({"t":[1]})", 8, "tensor 't' entry is not a JSON object");
  expect(R"({"a\nb":[1]})", 8, "tensor 'a\\x0ab' entry is not a JSON object");
  expect(R"([1,2])", 0, "header is a JSON array, expected an object");
  expect(R"({"__metadata__":{"a":1}})", 0, "__metadata__ value for 'a' is not a string");
  expect(R"({"__metadata__":[]})", 0, "__metadata__ is not a JSON object");
  expect(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
         16, "tensor 'b' data overlaps tensor 'a'");
  expect(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
         R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
         8, "header: invalid JSON: duplicate key 't' in object");
  expect(R"({"t":1,})", 0,
         "header: invalid JSON: parse error at line 1, column 8: syntax error while parsing object "
         "key - unexpected '}'; expected string literal");

  write_file(path, "");
  EXPECT_EQ(open_error(path), path + ": truncated while reading the header length (size 0)");
  write_file(path, std::string("\x05\0\0\0\0\0\0\0{}", 10));
  EXPECT_EQ(open_error(path), path + ": header length 5 runs past end of file (size 10)");
  write_file(path, std::string(8, '\xff'));
  EXPECT_EQ(open_error(path),
            path + ": header length 18446744073709551615 runs past end of file (size 8)");
  EXPECT_NE(open_error(dir.file("missing")).find("cannot open"), std::string::npos);
}

// The 100 MB header limit, checked on a sparse file so the test stays cheap.
TEST(Safetensors, RejectsHugeHeader) {
  TempDir dir;
  const std::string path = dir.file("huge.safetensors");
  const uint64_t n = 100'000'000;
  write_file(path, std::string(reinterpret_cast<const char*>(&n), 8));
  fs::resize_file(path, 8 + n + 16);
  EXPECT_EQ(open_error(path), path + ": header length 100000000 exceeds the 100 MB limit");
}

// The real fixture (copied from the HF oracle run): 197 F32 and 3 I64 tensors.
TEST(Safetensors, ReadsHfTinyFixture) {
  auto f = SafetensorsFile::open(DS4_SOURCE_DIR "/tests/fixtures/hf-tiny/model.safetensors");
  EXPECT_EQ(f->tensors().size(), 200u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const ds4::SafeTensor& embed = f->get("embed.weight");
  EXPECT_EQ(embed.dtype, "F32");
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{512, 256}));
  std::vector<float> e = embed.to_f32();
  ASSERT_EQ(e.size(), 512u * 256u);
  double sum_sq = 0;
  for (float x : e) {
    ASSERT_TRUE(std::isfinite(x));
    sum_sq += double(x) * x;
  }
  EXPECT_GT(sum_sq, 0.0);
  const ds4::SafeTensor& hash = f->get("layers.0.ffn.gate.tid2eid");
  EXPECT_EQ(hash.dtype, "I64");
  EXPECT_EQ(hash.shape, (std::vector<int64_t>{512, 2}));
  for (int64_t id : hash.to_i64()) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 8);  // n_routed_experts
  }
  size_t total = 0;
  for (const auto& t : f->tensors()) {
    total += t.nbytes;
    if (t.dtype == "F32") {
      EXPECT_EQ(t.to_f32().size(), size_t(t.nelements())) << t.name;
    }
  }
  EXPECT_EQ(total + 8 + 19624, fs::file_size(f->path()));  // tensors tile the data section
}

}  // namespace
