// Tap names and kernel variant names: generated from engine/taps.def and engine/variants.def (the
// single lists, style.md rule 4). all_taps() is in dataflow order; tap_index() is a tap's rank in
// it, which orders the taps of one (layer, position).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ds4 {

enum class Tap : uint8_t {
#define TAP(name, scope, when, doc) name,
#include "../../taps.def"
#undef TAP
};

inline constexpr int kTapCount = 0
#define TAP(name, scope, when, doc) +1
#include "../../taps.def"
#undef TAP
    ;

struct TapInfo {
  Tap tap;
  const char* name;
  const char* scope;  // "layer" | "head"
  const char* when;   // "always" | "compress" | "ratio4" | "indexed" | "shexp"
  const char* doc;
};

const std::vector<TapInfo>& all_taps();  // dataflow order
const TapInfo& tap_info(Tap t);
const char* tap_name(Tap t);
// The dataflow rank of a tap name (its index in taps.def), or -1 for a name not in the list.
int tap_index(std::string_view name);
// The Markdown table of the taps (`ds4-parity taps --markdown`).
std::string taps_markdown_table();

struct VariantInfo {
  const char* name;
  const char* family;
  const char* backends;  // "cpu", "cuda", "cpu,cuda" or "-" (named by gates.def only)
  const char* doc;
};

const std::vector<VariantInfo>& all_variants();
// The entry of a variant name, or nullptr for a name not in the list.
const VariantInfo* find_variant(std::string_view name);
std::string variants_markdown_table();

}  // namespace ds4
