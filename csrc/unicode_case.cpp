#include "unicode_case.h"

#include <algorithm>

#include "unicode_case_tables.h"

namespace quals {
namespace {

namespace t = unicode_tables;

constexpr char32_t kCapitalSigma = 0x03A3;
constexpr char32_t kSmallSigma = 0x03C3;
constexpr char32_t kFinalSigma = 0x03C2;
// A code point outside Unicode stands for a byte that is not well-formed UTF-8; the byte is
// kept in the low bits so it can be written back verbatim.
constexpr char32_t kRawByte = 0x110000;

char lower_ascii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; }

struct Decoded {
    char32_t cp;
    std::size_t length;
};

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), one raw byte at a time
// on anything malformed.
Decoded decode(std::string_view s, std::size_t i) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = byte(i);
    if (b0 < 0x80) return {b0, 1};
    std::size_t length;
    char32_t cp, min_cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        length = 2, cp = b0 & 0x1F, min_cp = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        length = 3, cp = b0 & 0x0F, min_cp = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        length = 4, cp = b0 & 0x07, min_cp = 0x10000;
    } else {
        return {kRawByte | b0, 1};
    }
    if (i + length > s.size()) return {kRawByte | b0, 1};
    for (std::size_t k = 1; k < length; ++k) {
        const unsigned char b = byte(i + k);
        if ((b & 0xC0) != 0x80) return {kRawByte | b0, 1};
        cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return {kRawByte | b0, 1};
    return {cp, length};
}

void encode(char32_t cp, std::string& out) {
    if (cp >= kRawByte) {
        out.push_back(static_cast<char>(cp & 0xFF));
    } else if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

const t::CaseRecord& record(char32_t cp) {
    // Raw bytes share the record of U+0000 (identity, uncased, not case-ignorable), whose zero
    // delta leaves the raw marker intact.
    if (cp >= kRawByte) cp = 0;
    return t::kRecords[t::kBlocks[t::kBlockIndex[cp >> t::kBlockShift]][cp & t::kBlockMask]];
}

t::CaseClass case_class(char32_t cp) { return record(cp).cls; }

void append_lower(char32_t cp, std::string& out) {
    if (cp < 0x80) {
        out.push_back(lower_ascii(static_cast<char>(cp)));
        return;
    }
    const t::CaseRecord& r = record(cp);
    if (r.multi) {
        const t::LowerMulti& m = t::kLowerMulti[r.multi - 1];
        for (int k = 0; k < m.length; ++k) encode(m.out[k], out);
    } else {
        encode(static_cast<char32_t>(static_cast<std::int32_t>(cp) + r.delta), out);
    }
}

// Forward half of the Final_Sigma condition: is the next code point after case-ignorable
// ones cased?
bool cased_follows(std::string_view s, std::size_t i) {
    while (i < s.size()) {
        const Decoded d = decode(s, i);
        const t::CaseClass cls = case_class(d.cp);
        if (cls != t::kIgnorable) return cls == t::kCased;
        i += d.length;
    }
    return false;
}

}  // namespace

const char* unicode_case_version() { return t::kUnidataVersion; }

std::string lower_utf8(std::string_view text) {
    std::string out;
    out.reserve(text.size() + text.size() / 8);
    // The backward half of the Final_Sigma condition is tracked as we go; text without a
    // capital sigma skips that and lower-cases its ASCII stretches in bulk.
    const bool has_sigma = text.find("\xCE\xA3") != std::string_view::npos;
    bool after_cased = false;  // the last non-case-ignorable code point so far was cased
    for (std::size_t i = 0; i < text.size();) {
        if (!has_sigma) {
            const std::size_t end = std::find_if(text.begin() + i, text.end(),
                                                 [](char c) { return static_cast<unsigned char>(c) >= 0x80; }) -
                                    text.begin();
            const std::size_t at = out.size();
            out.resize(at + (end - i));
            std::transform(text.begin() + i, text.begin() + end, out.begin() + at, lower_ascii);
            i = end;
            if (i == text.size()) break;
        }
        const Decoded d = decode(text, i);
        i += d.length;
        if (d.cp == kCapitalSigma) {
            encode(after_cased && !cased_follows(text, i) ? kFinalSigma : kSmallSigma, out);
        } else {
            append_lower(d.cp, out);
        }
        if (has_sigma) {
            const t::CaseClass cls = case_class(d.cp);
            if (cls != t::kIgnorable) after_cased = cls == t::kCased;
        }
    }
    return out;
}

}  // namespace quals
