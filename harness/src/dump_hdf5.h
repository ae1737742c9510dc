// Small HDF5 C-API helpers shared by the dump writer and reader (internal to libds4_harness):
// an owning handle, error-stack capture into one-line messages, and typed attribute / 1-D
// dataset access. Strings are variable-length UTF-8 (h5py reads them as str or bytes, h5dump
// prints them).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ds4::h5 {

// Switches off HDF5's automatic error printing (idempotent, process-wide): our errors are
// ds4::Error one-liners built from the error stack instead.
void quiet();
// The innermost message of the current HDF5 error stack ("truncated file: eof = ...").
std::string last_error();

// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  // Closes now and reports failure (a file close flushes; its error must not be lost).
  herr_t close();

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Each throws ds4::Error "<context>: <what> (<hdf5 message>)" on failure.
struct Context {
  std::string prefix;  // e.g. "dumps/a.h5: cannot write dump"
  [[noreturn]] void fail(const std::string& what) const;
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail(what);
    return id;
  }
  void check(herr_t rc, const std::string& what) const {
    if (rc < 0) fail(what);
  }
};

// ---- writing ----
hid_t string_type();  // variable-length UTF-8 C string (caller closes)
void write_attr(const Context& c, hid_t obj, const char* name, const std::string& value);
void write_attr(const Context& c, hid_t obj, const char* name, int64_t value);
void write_attr(const Context& c, hid_t obj, const char* name, uint64_t value);
void write_attr(const Context& c, hid_t obj, const char* name, int32_t value);
// 1-D (or 2-D when cols > 0) contiguous dataset of n elements of `mem_type` stored as
// `file_type`. n may be 0.
void write_dataset(const Context& c, hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                   const void* data, uint64_t n, uint64_t cols = 0);
void write_strings(const Context& c, hid_t loc, const char* name,
                   const std::vector<const char*>& values);
// A 1-D float32 dataset of n elements written piece by piece, so a tap's rows never have to sit
// in memory at once: next(buf) fills buf with the following elements and returns how many (at
// most buf.size(); the pieces in order make up exactly n elements).
void write_f32_pieces(const Context& c, hid_t loc, const char* name, uint64_t n,
                      std::vector<float>& buf,
                      const std::function<uint64_t(std::vector<float>& buf)>& next);

// ---- reading ----
bool has_attr(hid_t obj, const char* name);
bool has_link(hid_t loc, const char* name);
std::string read_attr_string(const Context& c, hid_t obj, const char* name);
int64_t read_attr_int(const Context& c, hid_t obj, const char* name);
uint64_t read_attr_uint(const Context& c, hid_t obj, const char* name);
// Element count of a dataset (product of its dimensions).
uint64_t dataset_size(const Context& c, hid_t dset, const std::string& what);
// Reads elements [first, first+count) of a 1-D dataset (whole 2-D rows for a 2-D one are not
// needed by the schema) converted to `mem_type`.
void read_dataset(const Context& c, hid_t dset, hid_t mem_type, void* out, uint64_t first,
                  uint64_t count, const std::string& what);
std::vector<std::string> read_strings(const Context& c, hid_t dset, const std::string& what);

}  // namespace ds4::h5
