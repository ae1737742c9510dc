// GGUF v3 writer. Metadata and tensors are held in insertion order (tensor data in memory, or in
// a ScratchFile after spill_tensors_near, or produced by a filler during write() for
// add_generated_tensor); write() streams them to "<path>.tmp.<pid>.<n>" and
// renames it over <path> only once every byte (and the close) has succeeded, so readers never
// see a partial file and a failed write leaves nothing behind.
// The temporary's name is unique per process and call: writers racing to create the same file
// (test programs generating a shared model on first use) each rename a complete file of their
// own; with a shared temporary one would rename the other's half-written bytes into place.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <exception>
#include <map>
#include <thread>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/scratch_file.h"

namespace ds4 {

namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;

struct PendingTensor {
  std::string name;
  std::vector<int64_t> ne;
  QType type;
  std::vector<uint8_t> data;  // in memory, or ...
  uint64_t spill_at = 0;      // ... at this offset of the scratch file (spilled)
  uint64_t nbytes = 0;
  bool spilled = false;
  bool hole = false;          // all zero bytes, skipped over in the output (a sparse hole)
  GgufWriter::RowFiller fill = nullptr;  // generated while write() runs (add_generated_tensor)
};

// Spilled tensors are copied into the output in pieces of this many bytes.
constexpr size_t kCopyPiece = size_t{16} << 20;
// Generated tensors are filled in pieces of whole rows of about this many bytes.
constexpr size_t kGeneratePiece = size_t{32} << 20;

// Buffered output that remembers the first I/O error instead of checking at every call site.
class Output {
 public:
  explicit Output(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "wb");
    if (!file_) errno_ = errno;
  }
  ~Output() {
    if (file_) std::fclose(file_);
  }
  bool opened() const { return file_ != nullptr; }
  int error() const { return errno_; }

  void bytes(const void* p, size_t n) {
    if (errno_ || n == 0) return;
    if (std::fwrite(p, 1, n, file_) != n) errno_ = errno ? errno : EIO;
    written_ += n;
    skipped_tail_ = false;
  }
  template <typename T>
  void pod(T v) { bytes(&v, sizeof v); }  // host is little-endian, as GGUF is
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad_to(uint64_t align) {
    static const uint8_t zeros[256] = {};
    uint64_t n = (align - written_ % align) % align;
    while (n > 0) {
      size_t k = n < sizeof zeros ? size_t(n) : sizeof zeros;
      bytes(zeros, k);
      n -= k;
    }
  }
  uint64_t written() const { return written_; }

  // Moves n bytes forward without writing them: the file system keeps a hole that reads back
  // as zeros and takes no disk blocks.
  void skip(uint64_t n) {
    if (errno_ || n == 0) return;
    if (std::fflush(file_) != 0 || fseeko(file_, static_cast<off_t>(n), SEEK_CUR) != 0) errno_ = errno ? errno : EIO;
    written_ += n;
    skipped_tail_ = true;
  }

  // Flushes and closes; returns the first error seen (0 if none).
  int close() {
    if (!file_) return errno_;
    if (std::fflush(file_) != 0 && !errno_) errno_ = errno ? errno : EIO;
    // A seek past the end writes nothing: give a trailing hole its length.
    if (skipped_tail_ && !errno_ && ftruncate(fileno(file_), static_cast<off_t>(written_)) != 0)
      errno_ = errno ? errno : EIO;
    if (std::fclose(file_) != 0 && !errno_) errno_ = errno ? errno : EIO;
    file_ = nullptr;
    return errno_;
  }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  int errno_ = 0;
  uint64_t written_ = 0;
  bool skipped_tail_ = false;
};

bool is_float_type(GgufType t) { return t == GgufType::FLOAT32 || t == GgufType::FLOAT64; }

// Writes one scalar of `type` taking its value from the member the reader would have filled.
void write_scalar(Output& out, GgufType type, uint64_t u, int64_t i, double f,
                  const std::string& s) {
  switch (type) {
    case GgufType::UINT8: out.pod<uint8_t>(uint8_t(u)); break;
    case GgufType::UINT16: out.pod<uint16_t>(uint16_t(u)); break;
    case GgufType::UINT32: out.pod<uint32_t>(uint32_t(u)); break;
    case GgufType::UINT64: out.pod<uint64_t>(u); break;
    case GgufType::INT8: out.pod<int8_t>(int8_t(i)); break;
    case GgufType::INT16: out.pod<int16_t>(int16_t(i)); break;
    case GgufType::INT32: out.pod<int32_t>(int32_t(i)); break;
    case GgufType::INT64: out.pod<int64_t>(i); break;
    case GgufType::FLOAT32: out.pod<float>(float(f)); break;
    case GgufType::FLOAT64: out.pod<double>(f); break;
    case GgufType::BOOL: out.pod<uint8_t>(u ? 1 : 0); break;
    case GgufType::STRING: out.str(s); break;
    case GgufType::ARRAY: break;  // never an array element (checked in set_value)
  }
}

void write_value(Output& out, const GgufValue& v) {
  out.pod<uint32_t>(static_cast<uint32_t>(v.type));
  if (v.type != GgufType::ARRAY) {
    write_scalar(out, v.type, v.u, v.i, v.f, v.s);
    return;
  }
  out.pod<uint32_t>(static_cast<uint32_t>(v.elem_type));
  out.pod<uint64_t>(v.array_size());
  static const std::string empty;
  if (v.elem_type == GgufType::STRING) {
    for (const auto& s : v.strings) write_scalar(out, v.elem_type, 0, 0, 0, s);
  } else if (is_float_type(v.elem_type)) {
    for (double x : v.floats) write_scalar(out, v.elem_type, 0, 0, x, empty);
  } else {
    // ints holds signed values, or the bit pattern of unsigned ones (see the reader).
    for (int64_t x : v.ints) write_scalar(out, v.elem_type, uint64_t(x), x, 0, empty);
  }
}

}  // namespace

struct GgufWriter::Impl {
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::map<std::string, size_t> kv_index;
  std::vector<PendingTensor> tensors;
  std::map<std::string, size_t> tensor_index;
  ScratchFile spill;
  std::string spill_path;  // the output path named in spill errors

  void set(const std::string& key, GgufValue v) {
    auto it = kv_index.find(key);
    if (it != kv_index.end()) {
      kv[it->second].second = std::move(v);
      return;
    }
    kv_index[key] = kv.size();
    kv.emplace_back(key, std::move(v));
  }

  uint32_t alignment() const {
    auto it = kv_index.find("general.alignment");
    if (it == kv_index.end()) return kDefaultAlignment;
    const GgufValue& v = kv[it->second].second;
    if (v.type != GgufType::UINT32 || v.u == 0 || (v.u & (v.u - 1)) != 0)
      fail("GGUF writer: general.alignment must be a u32 power of two");
    return static_cast<uint32_t>(v.u);
  }

  // Fills piece k + 1 while a second thread writes piece k (the filler's own threads do the
  // generating; writing is mostly the kernel copying into the page cache).
  // buf: two piece buffers, kept across tensors (fresh 32 MiB buffers per tensor would be
  // fresh pages, zeroed by the kernel, for every tensor).
  static void write_generated(Output& out, const PendingTensor& t, std::vector<uint8_t> (&buf)[2]) {
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    if (rows == 0 || t.nbytes == 0) return;
    const uint64_t row_bytes = t.nbytes / static_cast<uint64_t>(rows);
    const int64_t piece_rows = std::max<int64_t>(1, static_cast<int64_t>(kGeneratePiece / std::max<uint64_t>(1, row_bytes)));
    std::thread writer;
    auto join = [&] {
      if (writer.joinable()) writer.join();
    };
    try {
      int k = 0;
      for (int64_t r0 = 0; r0 < rows; r0 += piece_rows, k ^= 1) {
        const int64_t n = std::min(piece_rows, rows - r0);
        std::vector<uint8_t>& b = buf[k];
        const size_t bytes = static_cast<size_t>(row_bytes * static_cast<uint64_t>(n));
        if (b.size() < bytes) b.resize(bytes);
        t.fill(r0, n, b.data());
        join();
        if (out.error()) break;  // a full disk: stop generating, write() reports it
        writer = std::thread([&out, &b, bytes] { out.bytes(b.data(), bytes); });
      }
    } catch (...) {
      join();
      throw;
    }
    join();
  }

  void write_all(Output& out, uint32_t align) const {
    out.bytes("GGUF", 4);
    out.pod<uint32_t>(3);
    out.pod<uint64_t>(tensors.size());
    out.pod<uint64_t>(kv.size());
    for (const auto& [key, value] : kv) {
      out.str(key);
      write_value(out, value);
    }
    uint64_t offset = 0;  // relative to the data section
    for (const PendingTensor& t : tensors) {
      out.str(t.name);
      out.pod<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      for (int64_t d : t.ne) out.pod<uint64_t>(uint64_t(d));
      out.pod<uint32_t>(static_cast<uint32_t>(t.type));
      out.pod<uint64_t>(offset);
      offset += (t.nbytes + align - 1) / align * align;
    }
    out.pad_to(align);
    std::vector<uint8_t> piece, gen_buf[2];
    for (const PendingTensor& t : tensors) {
      if (t.hole) {
        out.skip(t.nbytes);
        out.skip((align - out.written() % align) % align);
        continue;
      }
      if (t.fill) {
        write_generated(out, t, gen_buf);
      } else if (!t.spilled) {
        out.bytes(t.data.data(), t.data.size());
      } else {
        piece.resize(std::min<uint64_t>(kCopyPiece, t.nbytes));
        for (uint64_t done = 0; done < t.nbytes;) {
          const size_t k = static_cast<size_t>(std::min<uint64_t>(piece.size(), t.nbytes - done));
          std::string why;
          if (!spill.read(t.spill_at + done, piece.data(), k, &why))
            fail(spill_path + ": write failed: reading tensor '" + t.name + "' back (" + why + ")");
          out.bytes(piece.data(), k);
          done += k;
        }
      }
      out.pad_to(align);
    }
  }
};

GgufWriter::GgufWriter() : impl_(std::make_unique<Impl>()) {}
GgufWriter::~GgufWriter() = default;

namespace {

GgufValue scalar(GgufType type) {
  GgufValue v;
  v.type = type;
  return v;
}

GgufValue array(GgufType elem) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem_type = elem;
  return v;
}

}  // namespace

void GgufWriter::set_u32(const std::string& key, uint32_t x) {
  GgufValue v = scalar(GgufType::UINT32);
  v.u = x;
  v.i = x;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_i32(const std::string& key, int32_t x) {
  GgufValue v = scalar(GgufType::INT32);
  v.i = x;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_u64(const std::string& key, uint64_t x) {
  GgufValue v = scalar(GgufType::UINT64);
  v.u = x;
  v.i = static_cast<int64_t>(x);
  impl_->set(key, std::move(v));
}

void GgufWriter::set_f32(const std::string& key, float x) {
  GgufValue v = scalar(GgufType::FLOAT32);
  v.f = x;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_bool(const std::string& key, bool x) {
  GgufValue v = scalar(GgufType::BOOL);
  v.u = x ? 1 : 0;
  v.i = v.u;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_str(const std::string& key, const std::string& x) {
  GgufValue v = scalar(GgufType::STRING);
  v.s = x;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_arr_str(const std::string& key, const std::vector<std::string>& x) {
  GgufValue v = array(GgufType::STRING);
  v.strings = x;
  impl_->set(key, std::move(v));
}

void GgufWriter::set_arr_i32(const std::string& key, const std::vector<int32_t>& x) {
  GgufValue v = array(GgufType::INT32);
  v.ints.assign(x.begin(), x.end());
  impl_->set(key, std::move(v));
}

void GgufWriter::set_arr_u32(const std::string& key, const std::vector<uint32_t>& x) {
  GgufValue v = array(GgufType::UINT32);
  v.ints.assign(x.begin(), x.end());
  impl_->set(key, std::move(v));
}

void GgufWriter::set_arr_f32(const std::string& key, const std::vector<float>& x) {
  GgufValue v = array(GgufType::FLOAT32);
  v.floats.assign(x.begin(), x.end());
  impl_->set(key, std::move(v));
}

void GgufWriter::set_value(const std::string& key, const GgufValue& v) {
  auto type = static_cast<uint32_t>(v.type);
  if (type > static_cast<uint32_t>(GgufType::FLOAT64))
    fail("GGUF writer: metadata key '" + key + "' has unknown type " + std::to_string(type));
  if (v.type == GgufType::ARRAY) {
    auto elem = static_cast<uint32_t>(v.elem_type);
    if (v.elem_type == GgufType::ARRAY || elem > static_cast<uint32_t>(GgufType::FLOAT64))
      fail("GGUF writer: metadata key '" + key + "' has unsupported array element type " +
           std::to_string(elem));
  }
  impl_->set(key, v);
}

namespace {

// The byte size of a tensor of this type and shape; throws naming the tensor on a bad shape.
uint64_t checked_tensor_bytes(const std::string& name, const std::vector<int64_t>& ne, QType type) {
  const std::string who = "GGUF writer: tensor '" + name + "'";
  if (ne.empty() || ne.size() > kMaxDims)
    fail(who + " has " + std::to_string(ne.size()) + " dimensions (expected 1.." +
         std::to_string(kMaxDims) + ")");
  if (!qtype_known(static_cast<uint32_t>(type)))
    fail(who + " has unknown type " + std::to_string(static_cast<uint32_t>(type)));
  for (int64_t d : ne)
    if (d < 0) fail(who + " has a negative dimension");
  const QTypeInfo& info = qtype_info(type);
  if (ne[0] % info.block_elems != 0)
    fail(who + " ne[0] = " + std::to_string(ne[0]) + " is not a multiple of the " + info.name +
         " block size " + std::to_string(info.block_elems));
  uint64_t expected = uint64_t(ne[0] / info.block_elems);
  bool overflow = __builtin_mul_overflow(expected, uint64_t(info.block_bytes), &expected);
  for (size_t d = 1; d < ne.size(); ++d)
    overflow = overflow || __builtin_mul_overflow(expected, uint64_t(ne[d]), &expected);
  if (overflow) fail(who + " byte size overflows");
  return expected;
}

}  // namespace

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type,
                            const void* data, size_t nbytes) {
  if (impl_->tensor_index.count(name)) fail("GGUF writer: tensor '" + name + "' added twice");
  // nbytes = row bytes * rows, checked here so that a bad shape names the tensor.
  const uint64_t expected = checked_tensor_bytes(name, ne, type);
  if (expected != nbytes)
    fail("GGUF writer: tensor '" + name + "' has " + std::to_string(nbytes) + " bytes, expected " +
         std::to_string(expected) + " for its type and shape");
  PendingTensor t{name, ne, type, {}};
  t.nbytes = nbytes;
  if (impl_->spill.is_open()) {
    std::string why;
    if (nbytes > 0 && !impl_->spill.append(data, nbytes, &t.spill_at, &why))
      fail(impl_->spill_path + ": write failed: " + why);
    t.spilled = true;
  } else if (nbytes > 0) {
    const auto* p = static_cast<const uint8_t*>(data);
    t.data.assign(p, p + nbytes);
  }
  impl_->tensor_index[name] = impl_->tensors.size();
  impl_->tensors.push_back(std::move(t));
}

void GgufWriter::add_zero_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type) {
  if (impl_->tensor_index.count(name)) fail("GGUF writer: tensor '" + name + "' added twice");
  PendingTensor t{name, ne, type, {}};
  t.nbytes = checked_tensor_bytes(name, ne, type);
  t.hole = true;
  impl_->tensor_index[name] = impl_->tensors.size();
  impl_->tensors.push_back(std::move(t));
}

void GgufWriter::add_generated_tensor(const std::string& name, const std::vector<int64_t>& ne, QType type,
                                      RowFiller fill) {
  if (impl_->tensor_index.count(name)) fail("GGUF writer: tensor '" + name + "' added twice");
  if (!fill) fail("GGUF writer: tensor '" + name + "' has no filler");
  PendingTensor t{name, ne, type, {}};
  t.nbytes = checked_tensor_bytes(name, ne, type);
  t.fill = std::move(fill);
  impl_->tensor_index[name] = impl_->tensors.size();
  impl_->tensors.push_back(std::move(t));
}

size_t GgufWriter::tensor_count() const { return impl_->tensors.size(); }

namespace {

// The folder `path` goes into ("" for the current one); a missing folder is named before any work.
std::string existing_folder_of(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    fail(path + ": cannot create: folder '" + parent.string() + "' does not exist");
  return parent.string();
}

}  // namespace

void GgufWriter::spill_tensors_near(const std::string& path) {
  if (impl_->spill.is_open()) return;
  std::string why;
  if (!impl_->spill.open(existing_folder_of(path), &why)) fail(path + ": cannot create: " + why);
  impl_->spill_path = path;
}

void GgufWriter::write(const std::string& path) const {
  const uint32_t align = impl_->alignment();
  static std::atomic<uint64_t> calls{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(calls++);
  existing_folder_of(path);
  int err = 0;
  {
    Output out(tmp);
    if (!out.opened()) fail(path + ": cannot create: " + std::strerror(out.error()));
    try {
      impl_->write_all(out, align);  // a filler or a spill read may throw: leave nothing behind
    } catch (...) {
      out.close();
      std::remove(tmp.c_str());
      throw;
    }
    err = out.close();
  }
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno ? errno : EIO;
  if (err != 0) {
    std::remove(tmp.c_str());
    fail(path + ": write failed: " + std::strerror(err));
  }
}

}  // namespace ds4
