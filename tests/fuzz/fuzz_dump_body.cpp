// libFuzzer target: the HDF5 body of a tap dump. The input is written to a scratch file and, when
// it is long enough, resealed (ds4::reseal_dump: a valid DS4 header for whatever bytes follow),
// so mutations get past the header check into libhdf5 and our schema validation. What it finds
// inside libhdf5 (Debian's uninstrumented build, which crashes, leaks and loops on some corrupt
// files) is only reachable with a file crafted to carry a valid checksum; scripts/fuzz runs this
// target in fork mode and triages library faults (tests/fuzz/README.md).
//   scripts/fuzz dump_body   (corpus: tests/fuzz/corpus/dump_body)
#include <cstdint>

#include "fuzz_dump_read.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".h5");
  const std::string& path = scratch.write(data, size);
  try {
    ds4::reseal_dump(path);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);  // too short, or no room for the header: read it as it is
  }
  ds4::fuzz::read_whole_dump(path);
  return 0;
}
