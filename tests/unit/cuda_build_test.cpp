// The CUDA build carries code for every GPU architecture it is configured for: each fat binary in
// libds4_cuda.a (one per .cu file) holds machine code (an ELF cubin) for every "NN-real" entry of
// CMAKE_CUDA_ARCHITECTURES and PTX for every "NN-virtual" one. Runs on the CPU (CI has nvcc but no
// GPU), reading the fat binaries' entry headers; no CUDA tool is needed.
//
// Fat binary layout (as nvcc writes it; the entry headers are never compressed, only payloads):
//   header  u32 magic 0xBA55ED50, u16 version (1), u16 header size (16), u64 size of the entries
//   entry   u16 kind (1 PTX, 2 ELF), u16, u32 entry header size, u64 payload size, ...,
//           u32 arch at byte 28 (80 for sm_80 / compute_80; 90 for sm_90a too)
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr uint32_t kFatbinMagic = 0xBA55ED50;
constexpr uint16_t kPtx = 1, kElf = 2;

template <class T>
T load(const std::string& b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}

// (kind, arch) of every entry of each well-formed fat binary found in `bytes`.
std::vector<std::set<std::pair<uint16_t, uint32_t>>> fatbin_entries(const std::string& bytes) {
  std::vector<std::set<std::pair<uint16_t, uint32_t>>> out;
  char magic[4];
  std::memcpy(magic, &kFatbinMagic, 4);
  // Any byte offset: archive members and their sections need not be 4-byte aligned in the file.
  for (size_t i = bytes.find(magic, 0, 4); i != std::string::npos && i + 16 <= bytes.size();
       i = bytes.find(magic, i + 1, 4)) {
    if (load<uint16_t>(bytes, i + 4) != 1 || load<uint16_t>(bytes, i + 6) != 16) continue;
    const uint64_t size = load<uint64_t>(bytes, i + 8);
    if (size > bytes.size() - i - 16) continue;
    std::set<std::pair<uint16_t, uint32_t>> entries;
    size_t p = i + 16;
    const size_t end = p + size;
    bool ok = true;
    while (ok && p + 32 <= end) {
      const uint16_t kind = load<uint16_t>(bytes, p);
      const uint32_t header = load<uint32_t>(bytes, p + 4);
      const uint64_t payload = load<uint64_t>(bytes, p + 8);
      ok = (kind == kPtx || kind == kElf) && header >= 32 && payload <= end - p - header;
      if (ok) entries.insert({kind, load<uint32_t>(bytes, p + 28)});
      p += header + payload;
    }
    if (ok && !entries.empty()) out.push_back(std::move(entries));
  }
  return out;
}

TEST(CudaBuild, EveryKernelFileCarriesEveryConfiguredArchitecture) {
#if !DS4_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA (-DDS4_CUDA=OFF)";
#else
  const std::string lib = std::string(DS4_BINARY_DIR) + "/engine/libds4_cuda.a";
  std::ifstream f(lib, std::ios::binary);
  ASSERT_TRUE(f) << lib;
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::set<std::pair<uint16_t, uint32_t>> wanted;
  std::istringstream archs(DS4_CUDA_ARCHITECTURES);
  for (std::string a; archs >> a;) {
    const bool ptx_only = a.find("-virtual") != std::string::npos;
    const bool elf_only = a.find("-real") != std::string::npos;
    const uint32_t arch = static_cast<uint32_t>(std::stoul(a));  // "90a-real" -> 90
    if (!ptx_only) wanted.insert({kElf, arch});
    if (!elf_only) wanted.insert({kPtx, arch});
  }
  ASSERT_FALSE(wanted.empty()) << "CMAKE_CUDA_ARCHITECTURES is empty";
  const auto fatbins = fatbin_entries(bytes);
  size_t cu_files = 0;  // one fat binary per .cu file (each holds kernels)
  for (const auto& e : std::filesystem::recursive_directory_iterator(std::string(DS4_SOURCE_DIR) + "/engine"))
    cu_files += e.path().extension() == ".cu";
  ASSERT_EQ(fatbins.size(), cu_files) << lib << ": one fat binary per .cu file expected";
  for (size_t i = 0; i < fatbins.size(); ++i)
    for (const auto& w : wanted)
      EXPECT_TRUE(fatbins[i].count(w)) << "fat binary " << i << " of " << lib << " has no "
                                       << (w.first == kElf ? "sm_" : "compute_") << w.second << " code";
  std::printf("%zu fat binaries, each with %zu images (CMAKE_CUDA_ARCHITECTURES: %s)\n", fatbins.size(),
              wanted.size(), DS4_CUDA_ARCHITECTURES);
#endif
}

}  // namespace
