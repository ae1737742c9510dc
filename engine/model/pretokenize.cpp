// The joyai-llm / DeepSeek V3 pre-tokenizer, hand-coded over UTF-8 code points.
//
// llama.cpp (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_JOYAI_LLM = DEEPSEEK3_LLM) applies three regexes
// in order; each pass splits every fragment left by the previous pass into its matches AND the
// unmatched gaps between them (unicode_regex_split_stl), so a later pass never sees across an
// earlier boundary:
//   1. \p{N}{1,3}
//   2. [\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+     (CJK, Hiragana, Katakana runs)
//   3. [!-/:-@\[-`{-~][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ | ␠?[\p{P}\p{S}]+[\r\n]*
//      | \s*[\r\n]+ | \s+(?!\S) | \s+
// Alternatives are tried in order at each position (ECMAScript: first alternative that matches
// wins, not the longest), and a fragment end behaves as the end of input for (?!\S).
//
// Character classes follow llama.cpp's "collapsed" regex evaluation:
//  * ASCII is exact to llama.cpp, including one quirk: its ASCII tables for \p{P} and \p{S} omit
//    '~' (U+007E), so '~' is neither punctuation nor symbol here (HF tokenizers treat it as Sm).
//  * \s is the six ASCII spaces (\t \n \v \f \r and ' ') plus non-ASCII White_Space code points.
//  * Non-ASCII categories come from the compact range table below, not from the full Unicode
//    database. Checked against Unicode 14 it is exact for Latin-1, Latin Extended, IPA, combining
//    marks U+0300–U+036F, Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari, Thai, general
//    punctuation U+2000–U+206F, super/subscripts, currency, letterlike and number forms,
//    arrows/math/technical/box/dingbat symbols, CJK symbols and punctuation, kana, CJK ideographs,
//    Hangul, fullwidth forms, emoji and pictographs, plus the digits of the common Indic and
//    SE-Asian scripts; overall 98.4% of assigned code points. Known approximations: a code point
//    not listed is a letter, so marks of other Indic/SE-Asian scripts count as letters (this only
//    changes whether one may be the one-character prefix of alternative 2), punctuation, symbols
//    and digits of rarer scripts (Syriac, Tibetan, Ethiopic, historic scripts) are letters, and
//    unassigned code points are letters where llama.cpp has "undefined" (an "other" here).
//  * Invalid UTF-8 bytes are one "other" code point each and keep their original byte (llama.cpp
//    replaces them by U+FFFD), so pieces always concatenate back to the input.
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "ds4/tokenizer.h"

namespace ds4 {
namespace {

// ---------------------------------------------------------------------------------------------
// Unicode classification
// ---------------------------------------------------------------------------------------------

// L letter, M mark, N number, P punctuation, S symbol, W white space (\s), O other (controls,
// format characters, private use, '~').
enum class Cat : uint8_t { L, M, N, P, S, W, O };

struct CatRange {
  uint32_t lo, hi;
  Cat cat;
};

// Sorted, non-overlapping; code points >= 0x80 not covered are letters.
constexpr CatRange kRanges[] = {
    // Latin-1 supplement.
    {0x0080, 0x0084, Cat::O}, {0x0085, 0x0085, Cat::W}, {0x0086, 0x009F, Cat::O},
    {0x00A0, 0x00A0, Cat::W}, {0x00A1, 0x00A1, Cat::P}, {0x00A2, 0x00A6, Cat::S},
    {0x00A7, 0x00A7, Cat::P}, {0x00A8, 0x00A9, Cat::S}, {0x00AA, 0x00AA, Cat::L},
    {0x00AB, 0x00AB, Cat::P}, {0x00AC, 0x00AC, Cat::S}, {0x00AD, 0x00AD, Cat::O},
    {0x00AE, 0x00B1, Cat::S}, {0x00B2, 0x00B3, Cat::N}, {0x00B4, 0x00B4, Cat::S},
    {0x00B5, 0x00B5, Cat::L}, {0x00B6, 0x00B7, Cat::P}, {0x00B8, 0x00B8, Cat::S},
    {0x00B9, 0x00B9, Cat::N}, {0x00BA, 0x00BA, Cat::L}, {0x00BB, 0x00BB, Cat::P},
    {0x00BC, 0x00BE, Cat::N}, {0x00BF, 0x00BF, Cat::P}, {0x00D7, 0x00D7, Cat::S},
    {0x00F7, 0x00F7, Cat::S},
    // Spacing modifier letters (Lm and Sk interleaved), combining diacritics.
    {0x02C2, 0x02C5, Cat::S}, {0x02D2, 0x02DF, Cat::S}, {0x02E5, 0x02EB, Cat::S},
    {0x02ED, 0x02ED, Cat::S}, {0x02EF, 0x02FF, Cat::S}, {0x0300, 0x036F, Cat::M},
    // Greek and Coptic.
    {0x0375, 0x0375, Cat::S}, {0x0378, 0x0379, Cat::O}, {0x037E, 0x037E, Cat::P},
    {0x0380, 0x0383, Cat::O}, {0x0384, 0x0385, Cat::S}, {0x0387, 0x0387, Cat::P},
    {0x03F6, 0x03F6, Cat::S},
    // Cyrillic.
    {0x0482, 0x0482, Cat::S}, {0x0483, 0x0489, Cat::M},
    // Armenian.
    {0x055A, 0x055F, Cat::P}, {0x0589, 0x058A, Cat::P}, {0x058D, 0x058F, Cat::S},
    // Hebrew.
    {0x0591, 0x05BD, Cat::M}, {0x05BE, 0x05BE, Cat::P}, {0x05BF, 0x05BF, Cat::M},
    {0x05C0, 0x05C0, Cat::P}, {0x05C1, 0x05C2, Cat::M}, {0x05C3, 0x05C3, Cat::P},
    {0x05C4, 0x05C5, Cat::M}, {0x05C6, 0x05C6, Cat::P}, {0x05C7, 0x05C7, Cat::M},
    {0x05F3, 0x05F4, Cat::P},
    // Arabic.
    {0x0600, 0x0605, Cat::O}, {0x0606, 0x0608, Cat::S}, {0x0609, 0x060A, Cat::P},
    {0x060B, 0x060B, Cat::S}, {0x060C, 0x060D, Cat::P}, {0x060E, 0x060F, Cat::S},
    {0x0610, 0x061A, Cat::M}, {0x061B, 0x061B, Cat::P}, {0x061C, 0x061C, Cat::O},
    {0x061D, 0x061F, Cat::P}, {0x064B, 0x065F, Cat::M}, {0x0660, 0x0669, Cat::N},
    {0x066A, 0x066D, Cat::P}, {0x0670, 0x0670, Cat::M}, {0x06D4, 0x06D4, Cat::P},
    {0x06D6, 0x06DC, Cat::M}, {0x06DD, 0x06DD, Cat::O}, {0x06DE, 0x06DE, Cat::S},
    {0x06DF, 0x06E4, Cat::M}, {0x06E7, 0x06E8, Cat::M}, {0x06E9, 0x06E9, Cat::S},
    {0x06EA, 0x06ED, Cat::M}, {0x06F0, 0x06F9, Cat::N}, {0x06FD, 0x06FE, Cat::S},
    // Devanagari.
    {0x0900, 0x0903, Cat::M}, {0x093A, 0x093C, Cat::M}, {0x093E, 0x094F, Cat::M},
    {0x0951, 0x0957, Cat::M}, {0x0962, 0x0963, Cat::M}, {0x0964, 0x0965, Cat::P},
    {0x0966, 0x096F, Cat::N}, {0x0970, 0x0970, Cat::P},
    // Digits of other Indic scripts (their marks are left as letters).
    {0x09E6, 0x09EF, Cat::N}, {0x0A66, 0x0A6F, Cat::N}, {0x0AE6, 0x0AEF, Cat::N},
    {0x0B66, 0x0B6F, Cat::N}, {0x0BE6, 0x0BF2, Cat::N}, {0x0C66, 0x0C6F, Cat::N},
    {0x0CE6, 0x0CEF, Cat::N}, {0x0D66, 0x0D6F, Cat::N},
    // Thai, Lao, Tibetan, Myanmar digits.
    {0x0E31, 0x0E31, Cat::M}, {0x0E34, 0x0E3A, Cat::M}, {0x0E3F, 0x0E3F, Cat::S},
    {0x0E47, 0x0E4E, Cat::M}, {0x0E4F, 0x0E4F, Cat::P}, {0x0E50, 0x0E59, Cat::N},
    {0x0E5A, 0x0E5B, Cat::P}, {0x0ED0, 0x0ED9, Cat::N}, {0x0F20, 0x0F33, Cat::N},
    {0x1040, 0x1049, Cat::N},
    // Ogham space, Khmer and Mongolian digits, combining extensions.
    {0x1680, 0x1680, Cat::W}, {0x17E0, 0x17E9, Cat::N}, {0x180E, 0x180E, Cat::O},
    {0x1810, 0x1819, Cat::N}, {0x1AB0, 0x1AFF, Cat::M}, {0x1DC0, 0x1DFF, Cat::M},
    // Greek extended: the spacing accents are Sk.
    {0x1FBD, 0x1FBD, Cat::S}, {0x1FBF, 0x1FC1, Cat::S}, {0x1FCD, 0x1FCF, Cat::S},
    {0x1FDD, 0x1FDF, Cat::S}, {0x1FED, 0x1FEF, Cat::S}, {0x1FFD, 0x1FFE, Cat::S},
    // General punctuation.
    {0x2000, 0x200A, Cat::W}, {0x200B, 0x200F, Cat::O}, {0x2010, 0x2027, Cat::P},
    {0x2028, 0x2029, Cat::W}, {0x202A, 0x202E, Cat::O}, {0x202F, 0x202F, Cat::W},
    {0x2030, 0x2043, Cat::P}, {0x2044, 0x2044, Cat::S}, {0x2045, 0x2051, Cat::P},
    {0x2052, 0x2052, Cat::S}, {0x2053, 0x205E, Cat::P}, {0x205F, 0x205F, Cat::W},
    {0x2060, 0x206F, Cat::O},
    // Super- and subscripts.
    {0x2070, 0x2070, Cat::N}, {0x2074, 0x2079, Cat::N}, {0x207A, 0x207C, Cat::S},
    {0x207D, 0x207E, Cat::P}, {0x2080, 0x2089, Cat::N}, {0x208A, 0x208C, Cat::S},
    {0x208D, 0x208E, Cat::P},
    // Currency, combining marks for symbols.
    {0x20A0, 0x20CF, Cat::S}, {0x20D0, 0x20F0, Cat::M},
    // Letterlike symbols (letters and symbols interleaved).
    {0x2100, 0x2101, Cat::S}, {0x2103, 0x2106, Cat::S}, {0x2108, 0x2109, Cat::S},
    {0x2114, 0x2114, Cat::S}, {0x2116, 0x2118, Cat::S}, {0x211E, 0x2123, Cat::S},
    {0x2125, 0x2125, Cat::S}, {0x2127, 0x2127, Cat::S}, {0x2129, 0x2129, Cat::S},
    {0x212E, 0x212E, Cat::S}, {0x213A, 0x213B, Cat::S}, {0x2140, 0x2144, Cat::S},
    {0x214A, 0x214D, Cat::S}, {0x214F, 0x214F, Cat::S},
    // Number forms.
    {0x2150, 0x2182, Cat::N}, {0x2185, 0x2189, Cat::N}, {0x218A, 0x218B, Cat::S},
    // Arrows, mathematical operators, miscellaneous technical (with bracket punctuation).
    {0x2190, 0x2307, Cat::S}, {0x2308, 0x230B, Cat::P}, {0x230C, 0x2328, Cat::S},
    {0x2329, 0x232A, Cat::P}, {0x232B, 0x245F, Cat::S},
    // Enclosed alphanumerics.
    {0x2460, 0x249B, Cat::N}, {0x249C, 0x24E9, Cat::S}, {0x24EA, 0x24FF, Cat::N},
    // Box drawing, shapes, miscellaneous symbols, dingbats.
    {0x2500, 0x2767, Cat::S}, {0x2768, 0x2775, Cat::P}, {0x2776, 0x2793, Cat::N},
    {0x2794, 0x27C4, Cat::S}, {0x27C5, 0x27C6, Cat::P}, {0x27C7, 0x27E5, Cat::S},
    {0x27E6, 0x27EF, Cat::P}, {0x27F0, 0x2982, Cat::S}, {0x2983, 0x2998, Cat::P},
    {0x2999, 0x29D7, Cat::S}, {0x29D8, 0x29DB, Cat::P}, {0x29DC, 0x29FB, Cat::S},
    {0x29FC, 0x29FD, Cat::P}, {0x29FE, 0x2BFF, Cat::S},
    // Coptic symbols, Tifinagh/Ethiopic letters stay letters; supplemental punctuation.
    {0x2CE5, 0x2CEA, Cat::S}, {0x2CEF, 0x2CF1, Cat::M}, {0x2CF9, 0x2CFC, Cat::P},
    {0x2CFD, 0x2CFD, Cat::N}, {0x2CFE, 0x2CFF, Cat::P}, {0x2DE0, 0x2DFF, Cat::M},
    {0x2E00, 0x2E2E, Cat::P}, {0x2E30, 0x2E4F, Cat::P}, {0x2E50, 0x2E51, Cat::S},
    {0x2E52, 0x2E7F, Cat::P},
    // CJK radicals, ideographic description.
    {0x2E80, 0x2FFF, Cat::S},
    // CJK symbols and punctuation.
    {0x3000, 0x3000, Cat::W}, {0x3001, 0x3003, Cat::P}, {0x3004, 0x3004, Cat::S},
    {0x3007, 0x3007, Cat::N}, {0x3008, 0x3011, Cat::P}, {0x3012, 0x3013, Cat::S},
    {0x3014, 0x301F, Cat::P}, {0x3020, 0x3020, Cat::S}, {0x3021, 0x3029, Cat::N},
    {0x302A, 0x302F, Cat::M}, {0x3030, 0x3030, Cat::P}, {0x3036, 0x3037, Cat::S},
    {0x3038, 0x303A, Cat::N}, {0x303D, 0x303D, Cat::P}, {0x303E, 0x303F, Cat::S},
    // Kana.
    {0x3099, 0x309A, Cat::M}, {0x309B, 0x309C, Cat::S}, {0x30A0, 0x30A0, Cat::P},
    {0x30FB, 0x30FB, Cat::P},
    // Kanbun, CJK strokes, enclosed CJK, compatibility.
    {0x3190, 0x3191, Cat::S}, {0x3192, 0x3195, Cat::N}, {0x3196, 0x319F, Cat::S},
    {0x31C0, 0x31EF, Cat::S}, {0x3200, 0x321F, Cat::S}, {0x3220, 0x3229, Cat::N},
    {0x322A, 0x3247, Cat::S}, {0x3248, 0x324F, Cat::N}, {0x3250, 0x3250, Cat::S},
    {0x3251, 0x325F, Cat::N}, {0x3260, 0x327F, Cat::S}, {0x3280, 0x3289, Cat::N},
    {0x328A, 0x32B0, Cat::S}, {0x32B1, 0x32BF, Cat::N}, {0x32C0, 0x33FF, Cat::S},
    {0x4DC0, 0x4DFF, Cat::S},
    // Yi radicals, surrogates, private use.
    {0xA490, 0xA4CF, Cat::S}, {0xD800, 0xF8FF, Cat::O},
    // Alphabetic presentation forms, Arabic presentation forms.
    {0xFB1E, 0xFB1E, Cat::M}, {0xFB29, 0xFB29, Cat::S}, {0xFBB2, 0xFBC2, Cat::S},
    {0xFD3E, 0xFD3F, Cat::P}, {0xFD40, 0xFD4F, Cat::S}, {0xFDCF, 0xFDCF, Cat::S},
    {0xFDFC, 0xFDFF, Cat::S},
    // Variation selectors, vertical forms, half marks, CJK compatibility and small forms.
    {0xFE00, 0xFE0F, Cat::M}, {0xFE10, 0xFE19, Cat::P}, {0xFE20, 0xFE2F, Cat::M},
    {0xFE30, 0xFE52, Cat::P}, {0xFE54, 0xFE61, Cat::P}, {0xFE62, 0xFE62, Cat::S},
    {0xFE63, 0xFE63, Cat::P}, {0xFE64, 0xFE66, Cat::S}, {0xFE68, 0xFE68, Cat::P},
    {0xFE69, 0xFE69, Cat::S}, {0xFE6A, 0xFE6B, Cat::P}, {0xFEFF, 0xFEFF, Cat::O},
    // Halfwidth and fullwidth forms.
    {0xFF01, 0xFF03, Cat::P}, {0xFF04, 0xFF04, Cat::S}, {0xFF05, 0xFF0A, Cat::P},
    {0xFF0B, 0xFF0B, Cat::S}, {0xFF0C, 0xFF0F, Cat::P}, {0xFF10, 0xFF19, Cat::N},
    {0xFF1A, 0xFF1B, Cat::P}, {0xFF1C, 0xFF1E, Cat::S}, {0xFF1F, 0xFF20, Cat::P},
    {0xFF3B, 0xFF3D, Cat::P}, {0xFF3E, 0xFF3E, Cat::S}, {0xFF3F, 0xFF3F, Cat::P},
    {0xFF40, 0xFF40, Cat::S}, {0xFF5B, 0xFF5B, Cat::P}, {0xFF5C, 0xFF5C, Cat::S},
    {0xFF5D, 0xFF5D, Cat::P}, {0xFF5E, 0xFF5E, Cat::S}, {0xFF5F, 0xFF65, Cat::P},
    {0xFFE0, 0xFFEE, Cat::S}, {0xFFF9, 0xFFFB, Cat::O}, {0xFFFC, 0xFFFD, Cat::S},
    // Musical symbols, mathematical alphanumerics (letters, then digits).
    {0x1D000, 0x1D24F, Cat::S}, {0x1D7CE, 0x1D7FF, Cat::N},
    // Mahjong .. symbols-and-pictographs extended-A: emoji and pictographs.
    {0x1F000, 0x1F0FF, Cat::S}, {0x1F100, 0x1F10C, Cat::N}, {0x1F10D, 0x1FBEF, Cat::S},
    {0x1FBF0, 0x1FBF9, Cat::N},
    // Tags, variation selectors supplement, private use planes.
    {0xE0000, 0xE007F, Cat::O}, {0xE0100, 0xE01EF, Cat::M}, {0xF0000, 0x10FFFF, Cat::O},
};

// ASCII exactly as llama.cpp's collapsed classes see it.
constexpr Cat ascii_cat(uint32_t c) {
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return Cat::W;
  if (c < 0x20 || c == 0x7F) return Cat::O;
  if (c >= '0' && c <= '9') return Cat::N;
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) return Cat::L;
  switch (c) {
    case '$': case '+': case '<': case '=': case '>': case '^': case '`': case '|':
      return Cat::S;
    case '~':
      return Cat::O;  // the llama.cpp quirk described in the file header
    default:
      return Cat::P;
  }
}

Cat classify(uint32_t cp) {
  if (cp < 0x80) return ascii_cat(cp);
  size_t lo = 0, hi = sizeof(kRanges) / sizeof(kRanges[0]);
  while (lo < hi) {  // first range with hi >= cp
    const size_t mid = (lo + hi) / 2;
    if (kRanges[mid].hi < cp) lo = mid + 1; else hi = mid;
  }
  if (lo < sizeof(kRanges) / sizeof(kRanges[0]) && kRanges[lo].lo <= cp) return kRanges[lo].cat;
  return Cat::L;
}

// ---------------------------------------------------------------------------------------------
// UTF-8 decoding
// ---------------------------------------------------------------------------------------------

struct CodePoint {
  uint32_t cp;
  uint32_t offset;  // byte offset in the text
  uint32_t len;     // bytes
  Cat cat;
};

// Decodes one code point at text[i]; an invalid or truncated sequence yields (0xFFFD, 1 byte).
std::pair<uint32_t, uint32_t> decode_utf8(std::string_view text, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t c0 = b(i);
  if (c0 < 0x80) return {c0, 1};
  uint32_t len = 0, cp = 0, min = 0;
  if ((c0 & 0xE0) == 0xC0) { len = 2; cp = c0 & 0x1F; min = 0x80; }
  else if ((c0 & 0xF0) == 0xE0) { len = 3; cp = c0 & 0x0F; min = 0x800; }
  else if ((c0 & 0xF8) == 0xF0) { len = 4; cp = c0 & 0x07; min = 0x10000; }
  else return {0xFFFD, 1};
  if (i + len > text.size()) return {0xFFFD, 1};
  for (uint32_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return {0xFFFD, 1};
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0xFFFD, 1};
  return {cp, len};
}

std::vector<CodePoint> decode_all(std::string_view text) {
  std::vector<CodePoint> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    auto [cp, len] = decode_utf8(text, i);
    const bool invalid = cp == 0xFFFD && len == 1;
    out.push_back({cp, static_cast<uint32_t>(i), len, invalid ? Cat::O : classify(cp)});
    i += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The three passes
// ---------------------------------------------------------------------------------------------

using Span = std::pair<size_t, size_t>;  // [begin, end) in code points

// One regex pass: `match(i, end)` returns the end of the match starting at i, or i for none.
// Matches and the gaps between them both become fragments (unicode_regex_split_stl).
template <typename Match>
std::vector<Span> split_pass(const std::vector<Span>& frags, Match match) {
  std::vector<Span> out;
  out.reserve(frags.size() * 2);
  for (const auto& [begin, end] : frags) {
    size_t gap = begin;
    for (size_t i = begin; i < end;) {
      const size_t m = match(i, end);
      if (m == i) { ++i; continue; }
      if (gap < i) out.emplace_back(gap, i);
      out.emplace_back(i, m);
      i = gap = m;
    }
    if (gap < end) out.emplace_back(gap, end);
  }
  return out;
}

bool is_cjk_kana(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF);
}
bool is_ascii_letter(uint32_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool is_ascii_punct(uint32_t c) {  // [!-/:-@\[-`{-~]
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}
bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

// Pass 3 at position i of a fragment ending at `end`; returns the match end or i.
size_t match_words(const std::vector<CodePoint>& cps, size_t i, size_t end) {
  const auto cat = [&](size_t k) { return cps[k].cat; };
  const auto letter_or_mark = [&](size_t k) { return cat(k) == Cat::L || cat(k) == Cat::M; };
  const auto punct_or_symbol = [&](size_t k) { return cat(k) == Cat::P || cat(k) == Cat::S; };
  const auto run = [&](size_t k, auto pred) {
    while (k < end && pred(k)) ++k;
    return k;
  };
  const uint32_t c = cps[i].cp;

  // [!-/:-@\[-`{-~][A-Za-z]+
  if (is_ascii_punct(c) && i + 1 < end && is_ascii_letter(cps[i + 1].cp)) {
    return run(i + 1, [&](size_t k) { return is_ascii_letter(cps[k].cp); });
  }
  // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
  const bool prefix = !is_newline(c) && cat(i) != Cat::L && !punct_or_symbol(i);
  if (prefix && i + 1 < end && letter_or_mark(i + 1)) return run(i + 1, letter_or_mark);
  if (letter_or_mark(i)) return run(i, letter_or_mark);
  // ␠?[\p{P}\p{S}]+[\r\n]*
  size_t k = (c == ' ' && i + 1 < end && punct_or_symbol(i + 1)) ? i + 1 : i;
  if (punct_or_symbol(k)) {
    k = run(k, punct_or_symbol);
    return run(k, [&](size_t j) { return is_newline(cps[j].cp); });
  }
  // \s*[\r\n]+ : the longest whitespace run ending just after its last CR/LF.
  if (cat(i) != Cat::W) return i;
  const size_t ws_end = run(i, [&](size_t j) { return cat(j) == Cat::W; });
  for (size_t j = ws_end; j > i; --j) {
    if (is_newline(cps[j - 1].cp)) return j;
  }
  // \s+(?!\S) : the whole run at the fragment end, else all but its last character; then \s+.
  if (ws_end == end || ws_end - 1 == i) return ws_end;
  return ws_end - 1;
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text) {
  const std::vector<CodePoint> cps = decode_all(text);
  std::vector<Span> frags;
  if (!cps.empty()) frags.emplace_back(0, cps.size());

  // Pass 1: \p{N}{1,3}
  frags = split_pass(frags, [&](size_t i, size_t end) {
    size_t k = i;
    while (k < end && k < i + 3 && cps[k].cat == Cat::N) ++k;
    return k;
  });
  // Pass 2: CJK ideograph / kana runs.
  frags = split_pass(frags, [&](size_t i, size_t end) {
    size_t k = i;
    while (k < end && is_cjk_kana(cps[k].cp)) ++k;
    return k;
  });
  // Pass 3: words, punctuation, whitespace.
  frags = split_pass(frags, [&](size_t i, size_t end) { return match_words(cps, i, end); });

  std::vector<std::string_view> out;
  out.reserve(frags.size());
  for (const auto& [begin, end] : frags) {
    const size_t b = cps[begin].offset;
    const size_t e = cps[end - 1].offset + cps[end - 1].len;
    out.push_back(text.substr(b, e - b));
  }
  return out;
}

}  // namespace ds4
