// SHA-256 for the manifest's model hash and ablation cell ids: OpenSSL's EVP interface (libcrypto).
// The file is streamed in 1 MiB blocks; the model file is hashed once per run.
#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ds4/dump.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

std::string to_hex(const unsigned char* md, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 0xf];
  }
  return out;
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr) != 1)
    fail("SHA-256: OpenSSL EVP_Digest failed");
  return to_hex(md, len);
}

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail(path + ": cannot read (" + std::strerror(errno) + ")");
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    fail(path + ": cannot hash (OpenSSL SHA-256 init failed)");
  std::vector<unsigned char> buf(1 << 20);
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f.get())) > 0)
    if (EVP_DigestUpdate(ctx.get(), buf.data(), got) != 1)
      fail(path + ": cannot hash (OpenSSL SHA-256 update failed)");
  if (std::ferror(f.get())) fail(path + ": cannot read (I/O error while hashing)");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1)
    fail(path + ": cannot hash (OpenSSL SHA-256 final failed)");
  return to_hex(md, len);
}

}  // namespace ds4
