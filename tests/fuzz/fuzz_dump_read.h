// The part of the dump fuzz targets (fuzz_dump.cpp, fuzz_dump_body.cpp) that opens a file with
// ds4::DumpReader and, when it opens, reads every tap completely: its index (positions, offsets,
// stats, variants), every row through for_each_row, and row()/stats()/variant() at its first and
// last position. Errors must be one line.
#pragma once
#include <string>

#include "ds4/dump.h"
#include "fuzz_util.h"

namespace ds4::fuzz {

inline void read_whole_dump(const std::string& path) {
  guarded([&] {
    const ds4::DumpReader r = ds4::DumpReader::open(path);
    double sink = 0;
    sink += r.manifest().to_text().size();
    sink += r.forwards().size();
    for (const ds4::TapKey& k : r.taps()) {
      check(r.has_tap(k.layer, k.name), "a listed tap is present");
      guarded([&] {
        const std::vector<int64_t> pos = r.positions(k.layer, k.name);
        r.for_each_row(k.layer, k.name, [&](const ds4::DumpRow& row) {
          check(!row.has_data || row.data.size() == row.length,
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
    escape(sink);
  });
}

}  // namespace ds4::fuzz
