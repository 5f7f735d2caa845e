// Python face of the QA-pair selection. Strings cross as UTF-8; all work runs without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "bindings/registry.h"
#include "selection.h"
#include "unicode_case.h"

namespace py = pybind11;

namespace quals::bindings {
namespace {

using PairTuple = std::tuple<std::size_t, std::string, std::string>;

std::vector<PairTuple> as_tuples(std::vector<QaCandidate> pairs) {
    std::vector<PairTuple> out;
    out.reserve(pairs.size());
    for (QaCandidate& p : pairs) out.emplace_back(p.index, std::move(p.question), std::move(p.answer));
    return out;
}

}  // namespace

void register_selection(py::module_& m) {
    m.attr("unicode_version") = unicode_case_version();
    m.attr("default_separator") = std::string(kDefaultSeparator);

    m.def(
        "lower", [](const std::string& text) { return lower_utf8(text); },
        py::arg("text"), py::call_guard<py::gil_scoped_release>(),
        "Python's str.lower(), computed by the C++ tables (for tests).");

    m.def(
        "filter_verbatim",
        [](const std::vector<std::string>& texts, const std::string& summary, const std::string& sep) {
            return as_tuples(filter_verbatim(texts, summary, sep));
        },
        py::arg("texts"), py::arg("summary"), py::arg("sep") = std::string(kDefaultSeparator),
        py::call_guard<py::gil_scoped_release>(),
        "(index, question, answer) of the candidates whose answer occurs verbatim (case-folded) "
        "in the summary, in input order.");

    m.def(
        "select_qa_pairs",
        [](const std::vector<std::string>& texts, const std::vector<double>& unnormalized_scores,
           const std::string& summary, const std::string& sep, std::size_t max_pairs, bool strict_cap) {
            return as_tuples(select_qa_pairs(texts, unnormalized_scores, summary, {sep, max_pairs, strict_cap}));
        },
        py::arg("texts"), py::arg("unnormalized_scores"), py::arg("summary"),
        py::arg("sep") = std::string(kDefaultSeparator), py::arg("max_pairs") = kDefaultMaxPairs,
        py::arg("strict_cap") = false, py::call_guard<py::gil_scoped_release>(),
        "(index, question, answer) of the kept QA pairs, in QUALS's round-robin order.");
}

}  // namespace quals::bindings
