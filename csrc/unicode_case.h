// Lower-casing of UTF-8 text with exactly the semantics of Python's str.lower() for the
// interpreter that generated the tables (full mappings, Final_Sigma), so that byte-wise
// substring tests on the results agree with Python's code-point ones.
#pragma once
#include <string>
#include <string_view>

namespace quals {

// Unicode version of the tables (Python's unicodedata.unidata_version at build time).
const char* unicode_case_version();

// Python's str.lower() on UTF-8 text. Bytes that are not well-formed UTF-8 are copied
// unchanged and act as uncased, non-case-ignorable characters.
std::string lower_utf8(std::string_view text);

}  // namespace quals
