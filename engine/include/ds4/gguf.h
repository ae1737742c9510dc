// GGUF v3 files: a validating, mmap-based reader and a writer.
//
// The reader checks every length, offset, alignment, type and shape against the file size before
// anything is dereferenced; any defect throws ds4::Error with one line naming the file and the
// key or tensor at fault. The writer writes to "<path>.tmp" and renames, so a reader never sees a
// half-written file.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ds4/quant.h"

namespace ds4 {

// GGUF metadata value types (gguf_type).
enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType type);

// One metadata value. Scalars keep their exact value in the member matching their type family;
// arrays keep strings in `strings` and numbers (any numeric or bool element type) in `ints`
// (integers and bools) or `floats` (FLOAT32/FLOAT64).
struct GgufValue {
  GgufType type = GgufType::UINT32;
  GgufType elem_type = GgufType::UINT32;  // element type when type == ARRAY
  uint64_t u = 0;                         // UINT8/16/32/64, BOOL
  int64_t i = 0;                          // INT8/16/32/64 (also set for unsigned that fit)
  double f = 0;                           // FLOAT32/64
  std::string s;                          // STRING
  std::vector<std::string> strings;       // ARRAY of STRING
  std::vector<int64_t> ints;              // ARRAY of integer or BOOL
  std::vector<double> floats;             // ARRAY of FLOAT32/FLOAT64
  size_t array_size() const;
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;   // GGUF order: ne[0] is the contiguous dimension
  QType type = QType::F32;
  uint64_t offset = 0;       // relative to the data section
  size_t nbytes = 0;         // validated against type and shape
  const uint8_t* data = nullptr;  // points into the mapping (valid while the GgufFile lives)
  int64_t nelements() const;
  int64_t rows() const;      // product of ne[1..]
};

class GgufFile {
 public:
  // Opens and validates `path`. Throws ds4::Error: "<path>: <what> ..." on any defect.
  static std::shared_ptr<GgufFile> open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }
  const uint8_t* bytes() const { return base_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

  // Typed getters. The plain form throws ds4::Error "<path>: metadata key '<key>' missing" or
  // "... has type X, expected Y". Integer getters accept any integer type whose value fits;
  // float getters accept FLOAT32/FLOAT64 and integers.
  uint32_t get_u32(const std::string& key) const;
  uint64_t get_u64(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  float get_f32(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_str(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;  // accepts int arrays too
  const std::vector<std::string>& get_str_array(const std::string& key) const;
  // Defaults when the key is absent (a present key of the wrong type still throws).
  uint32_t get_u32_or(const std::string& key, uint32_t fallback) const;
  float get_f32_or(const std::string& key, float fallback) const;
  bool get_bool_or(const std::string& key, bool fallback) const;
  std::string get_str_or(const std::string& key, const std::string& fallback) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;
  // Throws "<path>: tensor '<name>' missing".
  const GgufTensor& tensor(const std::string& name) const;

 private:
  GgufFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
  friend struct GgufParser;
};

class GgufWriter {
 public:
  GgufWriter();
  ~GgufWriter();
  // Metadata setters keep insertion order; setting an existing key replaces its value in place.
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_str(const std::string& key, const std::string& v);
  void set_arr_str(const std::string& key, const std::vector<std::string>& v);
  void set_arr_i32(const std::string& key, const std::vector<int32_t>& v);
  void set_arr_u32(const std::string& key, const std::vector<uint32_t>& v);
  void set_arr_f32(const std::string& key, const std::vector<float>& v);
  void set_value(const std::string& key, const GgufValue& v);  // copy from a reader
  // Adds a tensor; data (nbytes = qtype_row_bytes(type, ne[0]) * rows) is copied.
  // Throws on a duplicate name or a size that does not match the type and shape.
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type,
                  const void* data, size_t nbytes);
  // Adds a tensor whose bytes are all zero without holding or writing them: write() leaves a
  // hole (a sparse file region that reads back as zeros and takes no disk blocks). This is how
  // ds4-synth writes weightless fixtures of the 80 GiB published layout.
  void add_zero_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type);
  // Fills rows [row0, row0 + n_rows) of a tensor (a row = ne[0] elements, qtype_row_bytes(type,
  // ne[0]) bytes) at dst. Called by write() in order, a piece of whole rows at a time.
  using RowFiller = std::function<void(int64_t row0, int64_t n_rows, uint8_t* dst)>;
  // Adds a tensor whose bytes `fill` produces while write() runs, straight into the output in
  // pieces of about 32 MiB (the next piece is filled while the last one is written): an output
  // of any size with neither the tensors in memory nor a scratch copy on disk. How ds4-synth
  // --values random writes the 80 GiB published layout with values.
  void add_generated_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type, RowFiller fill);
  // For outputs larger than memory (a converted Flash checkpoint): tensor data added from now
  // on waits in an unlinked scratch file in the folder of `path` (the file write() will create)
  // instead of in memory, and is copied into place by write(). A failed scratch write (a full
  // disk) throws "<path>: write failed: <reason>", the message write() itself gives.
  void spill_tensors_near(const std::string& path);
  size_t tensor_count() const;
  // Writes GGUF v3 with general.alignment (default 32) to path via path + ".tmp" and rename.
  void write(const std::string& path) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4
