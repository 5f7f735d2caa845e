// QUALS's choice of question-answer pairs among generated "question<sep>answer" strings
// (filter_qas_dataset_lm_score of the original code, default path without answer-LM filtering).
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quals {

inline constexpr std::string_view kDefaultSeparator = " strutConnector";
inline constexpr std::size_t kDefaultMaxPairs = 10;

struct QaSplit {
    std::string question;
    std::string answer;
};

// Python's text.split(sep) when it gives exactly two parts, else nothing. The answer keeps its
// surrounding spaces. Throws std::invalid_argument on an empty separator, as Python does.
std::optional<QaSplit> split_qa(std::string_view text, std::string_view sep);

struct QaCandidate {
    std::size_t index;  // position in the candidate list
    std::string question;
    std::string answer;
};

// Candidates that split into a question and an answer whose lower-cased form occurs verbatim
// in the lower-cased summary, in input order. The empty answer always passes; an answer at the
// very start of the summary fails on its leading space.
std::vector<QaCandidate> filter_verbatim(const std::vector<std::string>& texts, std::string_view summary,
                                         std::string_view sep = kDefaultSeparator);

struct SelectionConfig {
    std::string separator{kDefaultSeparator};
    std::size_t max_pairs = kDefaultMaxPairs;
    // The reference checks the limit only before each round, so its last round can overshoot;
    // strict_cap stops as soon as max_pairs are kept instead.
    bool strict_cap = false;
};

// The filtered candidates, best unnormalised score first (stable on ties), taken round-robin
// over distinct lower-cased answers in order of first appearance, one candidate per answer per
// round. A candidate whose (lower-cased answer, lower-cased question) pair is already kept is
// dropped and still uses up its answer's turn. Rounds stop once max_pairs are kept or when a
// round keeps nothing. Throws std::invalid_argument on a size mismatch or a NaN score.
std::vector<QaCandidate> select_qa_pairs(const std::vector<std::string>& texts,
                                         const std::vector<double>& unnormalized_scores, std::string_view summary,
                                         const SelectionConfig& config = {});

}  // namespace quals
