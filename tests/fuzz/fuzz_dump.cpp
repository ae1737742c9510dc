// libFuzzer target: the tap-dump reader (ds4::DumpReader) on arbitrary bytes, as a user's file
// reaches it: written to a scratch file and opened. Every byte string that is not a dump written
// by DumpWriter must be refused with one line by the DS4 header check (dumps/SCHEMA.md) before
// libhdf5 parses it; the valid seeds are read completely (fuzz_dump_read.h).
//   scripts/fuzz dump        (corpus: tests/fuzz/corpus/dump)
#include <cstdint>

#include "fuzz_dump_read.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".h5");
  ds4::fuzz::read_whole_dump(scratch.write(data, size));
  return 0;
}
