// Run manifest text form and the naming helpers shared by dump writer and reader.
#include <cstdio>
#include <ctime>
#include <string>
#include <type_traits>

#include "ds4/dump.h"
#include "dump_schema.h"

namespace ds4 {

std::string RunManifest::to_text() const {
  std::string out;
  dump_schema::for_each_manifest_field(*this, [&](const char* name, const auto& v) {
    using T = std::decay_t<decltype(v)>;
    out += name;
    out += ": ";
    if constexpr (std::is_same_v<T, std::string>) {
      out += v;
    } else if constexpr (std::is_same_v<T, std::vector<int32_t>>) {
      out += "[" + std::to_string(v.size()) + "]";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : " ") + std::to_string(v[i]);
    } else {
      out += std::to_string(v);
    }
    out += '\n';
  });
  for (const auto& [k, v] : extra) out += dump_schema::kExtraPrefix + k + ": " + v + "\n";
  return out;
}

std::string tap_key_text(int layer, const std::string& name) {
  return "layer " + std::to_string(layer) + " '" + name + "'";
}

std::string dump_layer_group(int layer) {
  if (layer < 0) return "layer_" + std::to_string(layer);
  char buf[32];
  std::snprintf(buf, sizeof buf, "layer_%03d", layer);
  return buf;
}

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace ds4
