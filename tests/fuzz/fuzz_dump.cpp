// libFuzzer target: the HDF5 tap-dump reader (ds4::DumpReader) on arbitrary bytes. The input is
// written to a scratch file, opened, and on success every tap is read completely: its index
// (positions, offsets, stats, variants), every row through for_each_row, and row()/stats()/
// variant() at its first and last position.
//   scripts/fuzz dump        (corpus: tests/fuzz/corpus/dump)
// libhdf5 itself is Debian's uninstrumented build: ASan sees our code's accesses, and a fault
// inside the library still shows up as a crash (SEGV) with this input.
#include <cstdint>

#include "ds4/dump.h"
#include "fuzz_util.h"

namespace {

template <class F>
void guarded(F&& f) {
  try {
    f();
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".h5");
  const std::string& path = scratch.write(data, size);
  guarded([&] {
    const ds4::DumpReader r = ds4::DumpReader::open(path);
    double sink = 0;
    sink += r.manifest().to_text().size();
    sink += r.forwards().size();
    for (const ds4::TapKey& k : r.taps()) {
      ds4::fuzz::check(r.has_tap(k.layer, k.name), "a listed tap is present");
      guarded([&] {
        const std::vector<int64_t> pos = r.positions(k.layer, k.name);
        r.for_each_row(k.layer, k.name, [&](const ds4::DumpRow& row) {
          ds4::fuzz::check(!row.has_data || row.data.size() == row.length,
                           "a full row holds `length` floats");
          for (float x : row.data) sink += x;
          sink += row.stats.absmax + double(row.variant.size());
        });
        for (int64_t p : {pos.empty() ? int64_t(0) : pos.front(), pos.empty() ? int64_t(-1) : pos.back()}) {
          guarded([&] { sink += r.stats(k.layer, k.name, p).mean; });
          guarded([&] { sink += double(r.variant(k.layer, k.name, p).size()); });
          guarded([&] {
            for (float x : r.row(k.layer, k.name, p)) sink += x;
          });
        }
      });
    }
    guarded([&] { r.positions(12345, "no such tap"); });
    ds4::fuzz::escape(sink);
  });
  return 0;
}
