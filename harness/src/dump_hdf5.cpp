// HDF5 C-API helpers for the dump writer and reader (see dump_hdf5.h).
#include "dump_hdf5.h"

#include "ds4/error.h"

namespace ds4::h5 {

namespace {

// hardening (disk full): when a write fails (ENOSPC), H5Fclose fails too and HDF5 1.10 keeps a
// half-closed file object; its atexit handler (H5_term_library) then dereferences it and the
// process died with SIGSEGV after printing the error, exit 139 instead of 2. Every file we open
// is closed by RAII before exit, so the library's exit-time cleanup is not needed: switch it off
// before the first HDF5 call (H5dont_atexit only works before the library initialises).
const herr_t kNoAtExit = H5dont_atexit();

}  // namespace

void quiet() {
  (void)kNoAtExit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

namespace {

herr_t innermost(unsigned n, const H5E_error2_t* err, void* client) {
  // Walking upward, n == 0 is the function that detected the error: its description is the
  // specific one ("truncated file: eof = ...", "unable to open file: ... errno = 2").
  if (n == 0 && err->desc && *err->desc) *static_cast<std::string*>(client) = err->desc;
  return 0;
}

}  // namespace

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &msg);
  // hardening: HDF5's write-failure text embeds ctime() ("time = Wed Nov 25 13:28:06 2026\n, ..."),
  // which broke our one-line error messages; fold any line break into a space.
  for (char& ch : msg)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return msg.empty() ? std::string("unknown HDF5 error") : msg;
}

herr_t Handle::close() {
  if (id_ < 0) return 0;
  herr_t rc;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      rc = H5Fclose(id_);
      break;
    case H5I_GROUP:
      rc = H5Gclose(id_);
      break;
    case H5I_DATASET:
      rc = H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      rc = H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      rc = H5Tclose(id_);
      break;
    case H5I_ATTR:
      rc = H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      rc = H5Pclose(id_);
      break;
    default:
      rc = H5Idec_ref(id_) < 0 ? -1 : 0;
      break;
  }
  id_ = H5I_INVALID_HID;
  return rc;
}

void Handle::reset() { close(); }

void Context::fail(const std::string& what) const {
  const std::string msg = last_error();  // before any further HDF5 call clears the stack
  ds4::fail(prefix + ": " + what + " (" + msg + ")");
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

hid_t string_type() {
  const hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

namespace {

void write_scalar_attr(const Context& c, hid_t obj, const char* name, hid_t type,
                       const void* value) {
  Handle space(c.check(H5Screate(H5S_SCALAR), "create dataspace"));
  Handle attr(c.check(H5Acreate2(obj, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      std::string("create attribute ") + name));
  c.check(H5Awrite(attr.get(), type, value), std::string("write attribute ") + name);
}

}  // namespace

void write_attr(const Context& c, hid_t obj, const char* name, const std::string& value) {
  Handle type(string_type());
  const char* p = value.c_str();
  write_scalar_attr(c, obj, name, type.get(), &p);
}

void write_attr(const Context& c, hid_t obj, const char* name, int64_t value) {
  write_scalar_attr(c, obj, name, H5T_NATIVE_INT64, &value);
}

void write_attr(const Context& c, hid_t obj, const char* name, uint64_t value) {
  write_scalar_attr(c, obj, name, H5T_NATIVE_UINT64, &value);
}

void write_attr(const Context& c, hid_t obj, const char* name, int32_t value) {
  write_scalar_attr(c, obj, name, H5T_NATIVE_INT32, &value);
}

void write_dataset(const Context& c, hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                   const void* data, uint64_t n, uint64_t cols) {
  hsize_t dims[2] = {n, cols};
  if (cols) dims[0] = n / cols;
  Handle space(c.check(H5Screate_simple(cols ? 2 : 1, dims, nullptr), "create dataspace"));
  Handle dset(
      c.check(H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              std::string("create dataset ") + name));
  if (n) {
    c.check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
            std::string("write dataset ") + name);
  }
}

void write_f32_pieces(const Context& c, hid_t loc, const char* name, uint64_t n,
                      std::vector<float>& buf,
                      const std::function<uint64_t(std::vector<float>& buf)>& next) {
  hsize_t dims[1] = {n};
  Handle space(c.check(H5Screate_simple(1, dims, nullptr), "create dataspace"));
  Handle dset(c.check(
      H5Dcreate2(loc, name, H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      std::string("create dataset ") + name));
  uint64_t at = 0;
  while (at < n) {
    const uint64_t k = next(buf);
    if (k == 0 || at + k > n) c.fail(std::string("write dataset ") + name + ": rows do not add up");
    hsize_t start[1] = {at}, count[1] = {k};
    c.check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
            std::string("select rows of ") + name);
    Handle mem(c.check(H5Screate_simple(1, count, nullptr), "create dataspace"));
    c.check(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, buf.data()),
            std::string("write dataset ") + name);
    at += k;
  }
}

void write_strings(const Context& c, hid_t loc, const char* name,
                   const std::vector<const char*>& values) {
  Handle type(string_type());
  write_dataset(c, loc, name, type.get(), type.get(), values.data(), values.size());
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

bool has_link(hid_t loc, const char* name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }

namespace {

// Bytes of the file that holds `obj` (0 when unknown).
uint64_t file_bytes(hid_t obj) {
  Handle f(H5Iget_file_id(obj));
  hsize_t n = 0;
  if (!f.valid() || H5Fget_filesize(f.get(), &n) < 0) return 0;
  return n;
}

// hardening (found by tests/fuzz/fuzz_dump): a dataspace or a string type is metadata, and a
// corrupt file can claim any extent; the readers allocate before they read, so a few bytes made
// them ask for terabytes (std::bad_alloc, exit 3). Nothing we read is compressed, so an object
// cannot need more bytes than the file has.
void check_fits(const Context& c, hid_t obj, uint64_t bytes, const std::string& what) {
  const uint64_t have = file_bytes(obj);
  if (have != 0 && bytes > have)
    ds4::fail(c.prefix + ": " + what + " claims " + std::to_string(bytes) +
              " bytes, more than the whole file (" + std::to_string(have) + " bytes); the file is corrupt");
}

}  // namespace

namespace {

// HDF5 has no conversion between ASCII and UTF-8 strings: read with the file's character set
// (other writers, e.g. h5py with bytes or the C API defaults, store ASCII).
hid_t same_cset_string_type(hid_t file_type) {
  const hid_t t = string_type();
  H5Tset_cset(t, H5Tget_cset(file_type));
  return t;
}

}  // namespace

std::string read_attr_string(const Context& c, hid_t obj, const char* name) {
  const std::string what = std::string("attribute '") + name + "'";
  Handle attr(c.check(H5Aopen(obj, name, H5P_DEFAULT), "open " + what));
  Handle ftype(c.check(H5Aget_type(attr.get()), "type of " + what));
  if (H5Tget_class(ftype.get()) != H5T_STRING)
    ds4::fail(c.prefix + ": " + what + " is not a string");
  if (H5Tis_variable_str(ftype.get()) > 0) {
    Handle mtype(same_cset_string_type(ftype.get()));
    char* p = nullptr;
    c.check(H5Aread(attr.get(), mtype.get(), &p), "read " + what);
    std::string out = p ? p : "";
    H5free_memory(p);
    return out;
  }
  // Fixed-length strings (written by other tools, e.g. h5py with numpy bytes) are accepted too.
  const size_t size = H5Tget_size(ftype.get());
  check_fits(c, obj, size, what);  // hardening: see check_fits
  std::string out(size, '\0');
  Handle mtype(H5Tcopy(H5T_C_S1));
  H5Tset_size(mtype.get(), size);
  H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get()));
  H5Tset_strpad(mtype.get(), H5T_STR_NULLPAD);  // NULLTERM would drop the last character
  c.check(H5Aread(attr.get(), mtype.get(), out.data()), "read " + what);
  out.resize(out.find('\0') == std::string::npos ? size : out.find('\0'));
  return out;
}

namespace {

void read_scalar_attr(const Context& c, hid_t obj, const char* name, hid_t mem_type, void* out) {
  const std::string what = std::string("attribute '") + name + "'";
  Handle attr(c.check(H5Aopen(obj, name, H5P_DEFAULT), "open " + what));
  Handle ftype(c.check(H5Aget_type(attr.get()), "type of " + what));
  if (H5Tget_class(ftype.get()) != H5T_INTEGER)
    ds4::fail(c.prefix + ": " + what + " is not an integer");
  Handle space(c.check(H5Aget_space(attr.get()), "dataspace of " + what));
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    ds4::fail(c.prefix + ": " + what + " is not a scalar");
  c.check(H5Aread(attr.get(), mem_type, out), "read " + what);
}

}  // namespace

int64_t read_attr_int(const Context& c, hid_t obj, const char* name) {
  int64_t v = 0;
  read_scalar_attr(c, obj, name, H5T_NATIVE_INT64, &v);
  return v;
}

uint64_t read_attr_uint(const Context& c, hid_t obj, const char* name) {
  uint64_t v = 0;
  read_scalar_attr(c, obj, name, H5T_NATIVE_UINT64, &v);
  return v;
}


uint64_t dataset_size(const Context& c, hid_t dset, const std::string& what) {
  Handle space(c.check(H5Dget_space(dset), "dataspace of " + what));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0) c.fail("size of " + what);
  check_fits(c, dset, static_cast<uint64_t>(n), what);  // at least one byte per element
  return static_cast<uint64_t>(n);
}

void read_dataset(const Context& c, hid_t dset, hid_t mem_type, void* out, uint64_t first,
                  uint64_t count, const std::string& what) {
  if (count == 0) return;
  Handle fspace(c.check(H5Dget_space(dset), "dataspace of " + what));
  if (H5Sget_simple_extent_ndims(fspace.get()) != 1)
    ds4::fail(c.prefix + ": " + what + " is not 1-D");
  const hsize_t start = first, cnt = count;
  c.check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &start, nullptr, &cnt, nullptr),
          "select " + what);
  Handle mspace(c.check(H5Screate_simple(1, &cnt, nullptr), "create dataspace"));
  c.check(H5Dread(dset, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out), "read " + what);
}

std::vector<std::string> read_strings(const Context& c, hid_t dset, const std::string& what) {
  const uint64_t n = dataset_size(c, dset, what);
  Handle ftype(c.check(H5Dget_type(dset), "type of " + what));
  if (H5Tget_class(ftype.get()) != H5T_STRING)
    ds4::fail(c.prefix + ": " + what + " is not strings");
  std::vector<std::string> out;
  out.reserve(n);
  if (n == 0) return out;
  if (H5Tis_variable_str(ftype.get()) > 0) {
    Handle mtype(same_cset_string_type(ftype.get()));
    std::vector<char*> p(n, nullptr);
    c.check(H5Dread(dset, mtype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()), "read " + what);
    for (char* s : p) out.emplace_back(s ? s : "");
    Handle space(H5Dget_space(dset));
#if H5_VERSION_GE(1, 12, 0)
    H5Treclaim(mtype.get(), space.get(), H5P_DEFAULT, p.data());
#else
    H5Dvlen_reclaim(mtype.get(), space.get(), H5P_DEFAULT, p.data());
#endif
    return out;
  }
  const size_t size = H5Tget_size(ftype.get());
  uint64_t total = 0;  // hardening: n * size overflowed into a short buffer that H5Dread overran
  if (__builtin_mul_overflow(n, uint64_t(size), &total)) total = UINT64_MAX;
  check_fits(c, dset, total, what);
  std::vector<char> buf(total);
  Handle mtype(H5Tcopy(H5T_C_S1));
  H5Tset_size(mtype.get(), size);
  H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get()));
  H5Tset_strpad(mtype.get(), H5T_STR_NULLPAD);  // NULLTERM would drop the last character
  c.check(H5Dread(dset, mtype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), "read " + what);
  for (uint64_t i = 0; i < n; ++i) {
    const char* s = buf.data() + i * size;
    size_t len = 0;
    while (len < size && s[len]) ++len;
    out.emplace_back(s, len);
  }
  return out;
}

}  // namespace ds4::h5
