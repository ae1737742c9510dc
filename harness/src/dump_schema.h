// The names of dump schema 1 (dumps/SCHEMA.md), shared by writer, reader and manifest text so
// that the list of manifest fields exists once.
#pragma once
#include "ds4/dump.h"

namespace ds4::dump_schema {

// Root datasets.
inline constexpr const char* kTokens = "tokens";               // int32 [T]
inline constexpr const char* kForwards = "forwards";           // int64 [F, 2]
inline constexpr const char* kOrderLayer = "tap_order_layer";  // int32 [K]
inline constexpr const char* kOrderName = "tap_order_name";    // string [K]
// Root attributes beyond the manifest fields: fixed by the schema, written for human readers.
inline constexpr const char* kDataDtype = "data_dtype";  // "float32"
inline constexpr const char* kTapNaming = "tap_naming";  // where tap names are defined
inline constexpr const char* kTapNamingValue = "ds4-model.md section 12 (llama.cpp cb() names)";
inline constexpr const char* kExtraPrefix = "extra.";  // RunManifest::extra[k]
// Per-tap group attributes and datasets.
inline constexpr const char* kLayer = "layer";           // int32 attribute (layer and tap groups)
inline constexpr const char* kName = "name";             // string attribute
inline constexpr const char* kRowLength = "row_length";  // int64 attribute, -1 if rows vary
inline constexpr const char* kPositions = "positions";   // int64 [P]
inline constexpr const char* kOffsets = "offsets";       // int64 [P+1]
inline constexpr const char* kData = "data";             // float32 [offsets[P]] (level full)
inline constexpr const char* kVariant = "variant";       // string [P]
inline constexpr const char* kAbsmax = "absmax";         // float64 [P]
inline constexpr const char* kMean = "mean";             // float64 [P]
inline constexpr const char* kNanCount = "nan_count";    // uint64 [P]
inline constexpr const char* kInfCount = "inf_count";    // uint64 [P]
inline constexpr const char* kHash = "hash";             // uint64 [P]

// Calls f(name, field) for every manifest field, in declaration order (= to_text order).
// `tokens` is the /tokens dataset; every other field is a root attribute of the same name.
template <class M, class F>
void for_each_manifest_field(M& m, F&& f) {
  f("schema_version", m.schema_version);
  f("engine_version", m.engine_version);
  f("engine_git_sha", m.engine_git_sha);
  f("model_path", m.model_path);
  f("model_sha256", m.model_sha256);
  f("model_name", m.model_name);
  f("backend", m.backend);
  f("device_name", m.device_name);
  f("sm_count", m.sm_count);
  f("cuda_version", m.cuda_version);
  f("cublas_version", m.cublas_version);
  f("profile", m.profile);
  f("gate_set", m.gate_set);
  f("run_mode", m.run_mode);
  f("width", m.width);
  f("tokens", m.tokens);
  f("seed", m.seed);
  f("tap_level", m.tap_level);
  f("tap_filter", m.tap_filter);
  f("created_utc", m.created_utc);
  f("command_line", m.command_line);
}

}  // namespace ds4::dump_schema
