// Tap and variant registries, generated from taps.def and variants.def.
#include "ds4/tap_list.h"

namespace ds4 {

const std::vector<TapInfo>& all_taps() {
  static const std::vector<TapInfo> taps = {
#define TAP(name, scope, when, doc) {Tap::name, #name, #scope, #when, doc},
#include "taps.def"
#undef TAP
  };
  return taps;
}

const TapInfo& tap_info(Tap t) { return all_taps().at(static_cast<size_t>(t)); }
const char* tap_name(Tap t) { return tap_info(t).name; }

int tap_index(std::string_view name) {
  const std::vector<TapInfo>& taps = all_taps();
  for (size_t i = 0; i < taps.size(); ++i)
    if (name == taps[i].name) return static_cast<int>(i);
  return -1;
}

std::string taps_markdown_table() {
  std::string t = "| # | tap | scope | when | what it holds |\n|---|---|---|---|---|\n";
  int i = 0;
  for (const TapInfo& x : all_taps())
    t += "| " + std::to_string(i++) + " | `" + x.name + "` | " + x.scope + " | " + x.when + " | " + x.doc + " |\n";
  return t;
}

const std::vector<VariantInfo>& all_variants() {
  static const std::vector<VariantInfo> variants = {
#define VARIANT(name, family, backends, doc) {name, #family, backends, doc},
#include "variants.def"
#undef VARIANT
  };
  return variants;
}

const VariantInfo* find_variant(std::string_view name) {
  for (const VariantInfo& v : all_variants())
    if (name == v.name) return &v;
  return nullptr;
}

std::string variants_markdown_table() {
  std::string t = "| variant | family | backends | what it is |\n|---|---|---|---|\n";
  for (const VariantInfo& v : all_variants())
    t += std::string("| `") + v.name + "` | " + v.family + " | " + v.backends + " | " + v.doc + " |\n";
  return t;
}

}  // namespace ds4
