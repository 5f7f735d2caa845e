#include "selection.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "unicode_case.h"

namespace quals {

std::optional<QaSplit> split_qa(std::string_view text, std::string_view sep) {
    if (sep.empty()) throw std::invalid_argument("empty separator");
    const std::size_t at = text.find(sep);
    if (at == std::string_view::npos) return std::nullopt;
    const std::string_view answer = text.substr(at + sep.size());
    // Python's split scans for non-overlapping occurrences left to right, so a second part
    // is a second occurrence after the first one ends.
    if (answer.find(sep) != std::string_view::npos) return std::nullopt;
    return QaSplit{std::string(text.substr(0, at)), std::string(answer)};
}

std::vector<QaCandidate> filter_verbatim(const std::vector<std::string>& texts, std::string_view summary,
                                         std::string_view sep) {
    // UTF-8 is self-synchronising, so a byte match is a code-point match.
    const std::string summary_lower = lower_utf8(summary);
    std::vector<QaCandidate> kept;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        std::optional<QaSplit> qa = split_qa(texts[i], sep);
        if (qa && summary_lower.find(lower_utf8(qa->answer)) != std::string::npos) {
            kept.push_back({i, std::move(qa->question), std::move(qa->answer)});
        }
    }
    return kept;
}

namespace {

struct AnswerGroup {
    std::vector<const QaCandidate*> members;  // best score first
    std::size_t next = 0;
    std::unordered_set<std::string> kept_questions;  // lower-cased
};

}  // namespace

std::vector<QaCandidate> select_qa_pairs(const std::vector<std::string>& texts,
                                         const std::vector<double>& unnormalized_scores, std::string_view summary,
                                         const SelectionConfig& config) {
    if (texts.size() != unnormalized_scores.size()) {
        throw std::invalid_argument("select_qa_pairs: " + std::to_string(texts.size()) + " texts but " +
                                    std::to_string(unnormalized_scores.size()) + " scores");
    }
    for (std::size_t i = 0; i < unnormalized_scores.size(); ++i) {
        // NaN has no place in the reference's sort order (and would break the comparator here).
        if (std::isnan(unnormalized_scores[i])) {
            throw std::invalid_argument("select_qa_pairs: unnormalized score of candidate " + std::to_string(i) +
                                        " is NaN");
        }
    }
    std::vector<QaCandidate> valid = filter_verbatim(texts, summary, config.separator);
    std::stable_sort(valid.begin(), valid.end(), [&](const QaCandidate& a, const QaCandidate& b) {
        return unnormalized_scores[a.index] > unnormalized_scores[b.index];
    });

    std::vector<AnswerGroup> groups;
    std::unordered_map<std::string, std::size_t> group_of_answer;
    for (const QaCandidate& c : valid) {
        const auto [slot, fresh] = group_of_answer.try_emplace(lower_utf8(c.answer), groups.size());
        if (fresh) groups.emplace_back();
        groups[slot->second].members.push_back(&c);
    }

    std::vector<QaCandidate> kept;
    const auto full = [&] { return kept.size() >= config.max_pairs; };
    while (!full()) {
        bool added = false;
        for (AnswerGroup& group : groups) {
            if (config.strict_cap && full()) break;
            if (group.next == group.members.size()) continue;
            const QaCandidate& c = *group.members[group.next++];
            if (!group.kept_questions.insert(lower_utf8(c.question)).second) continue;
            kept.push_back(c);
            added = true;
        }
        if (!added) break;
    }
    return kept;
}

}  // namespace quals
