// safetensors files (HF checkpoints): a validating mmap reader. Header JSON is parsed by a small
// strict parser; every dtype, shape and data_offsets pair is checked against the file size.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ds4 {

struct SafeTensor {
  std::string name;
  std::string dtype;             // "F32", "F16", "BF16", "I64", "I32", "F64", "U8", "I8", ...
  std::vector<int64_t> shape;    // HF (row-major) order: shape.back() is contiguous
  const uint8_t* data = nullptr; // into the mapping
  size_t nbytes = 0;
  int64_t nelements() const;
  // Converts F32/F16/BF16/F64 data to F32 (throws ds4::Error for other dtypes).
  std::vector<float> to_f32() const;
  // Converts I64/I32/I16/I8/U8 data to int64 (throws for other dtypes).
  std::vector<int64_t> to_i64() const;
};

class SafetensorsFile {
 public:
  // Throws ds4::Error "<path>: ..." on any defect (bad header length, bad JSON, unknown dtype,
  // offsets out of range or overlapping, shape/size mismatch).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::string& path() const { return path_; }
  const std::vector<SafeTensor>& tensors() const { return tensors_; }
  const SafeTensor* find(const std::string& name) const;
  const SafeTensor& get(const std::string& name) const;  // throws naming the tensor
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<SafeTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  friend struct SafetensorsParser;
};

}  // namespace ds4
