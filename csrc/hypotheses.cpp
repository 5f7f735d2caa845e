#include "hypotheses.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace quals {

BeamBookkeeper::BeamBookkeeper(const SearchConfig& cfg, int64_t batch)
    : cfg_(cfg), finished_(static_cast<size_t>(batch > 0 ? batch : 0)) {
    cfg_.validate();
    if (batch < 1) throw std::invalid_argument("batch must be >= 1");
    // fairseq silently caps the beam at vocab_size - 1 (pad is never chosen); refusing keeps
    // every accepted decode identical to the reference.
    if (cfg_.num_beams > cfg_.vocab_size - 1)
        throw std::invalid_argument("vocabulary too small: num_beams (" + std::to_string(cfg_.num_beams) +
                                    ") must be below vocab_size (" + std::to_string(cfg_.vocab_size) + ")");
    active_.resize(static_cast<size_t>(batch));
    for (int64_t i = 0; i < batch; ++i) active_[i] = i;
    const size_t rows = static_cast<size_t>(batch * cfg_.num_beams);
    live_scores_.assign(rows, 0.f);
    tokens_.assign(rows * static_cast<size_t>(cfg_.max_len + 1), 0);
    scores_.assign(rows * static_cast<size_t>(cfg_.max_len + 1), 0.f);
}

void BeamBookkeeper::finalize(int64_t input, int64_t row, int64_t eos_token, float eos_score) {
    auto& pool = finished_[static_cast<size_t>(input)];
    // fairseq stops collecting once the pool is full; later EOS leaders of the step are dropped.
    if (static_cast<int64_t>(pool.size()) >= cfg_.num_beams) return;
    const int64_t hist = cfg_.max_len + 1;
    const int64_t len = step_ + 1;
    Hypothesis h;
    h.tokens.assign(tokens_.begin() + row * hist, tokens_.begin() + row * hist + step_);
    h.tokens.push_back(eos_token);
    h.positional_scores.resize(static_cast<size_t>(len));
    float prev = 0.f;
    for (int64_t t = 0; t < step_; ++t) {
        const float cum = scores_[row * hist + t];
        h.positional_scores[t] = cum - prev;
        prev = cum;
    }
    h.positional_scores[step_] = eos_score - prev;
    // fairseq raises the length to the penalty in Python (double), then divides in float32.
    const float denom = static_cast<float>(std::pow(static_cast<double>(len), static_cast<double>(cfg_.len_penalty)));
    h.score = eos_score / denom;
    pool.push_back(std::move(h));
}

StepPlan BeamBookkeeper::advance(const float* cand_scores, const int64_t* cand_tokens,
                                 const int64_t* cand_beams, int64_t width) {
    if (done()) throw std::logic_error("search already finished");
    const int64_t K = cfg_.num_beams;
    const int64_t hist = cfg_.max_len + 1;
    const int64_t n_active = num_active();
    auto finite_eos = [&](int64_t i) {
        return cand_tokens[i] == cfg_.eos_id && cand_scores[i] != -INFINITY;
    };

    // Only the first K columns (each group's leaders) may finish a hypothesis.
    std::vector<char> keep(static_cast<size_t>(n_active), 1);
    for (int64_t a = 0; a < n_active; ++a) {
        const int64_t input = active_[a];
        const int64_t base = a * width;
        bool saw_eos = false;
        for (int64_t c = 0; c < K && c < width; ++c) {
            if (!finite_eos(base + c)) continue;
            saw_eos = true;
            finalize(input, a * K + cand_beams[base + c], cand_tokens[base + c], cand_scores[base + c]);
        }
        // fairseq re-checks an input only when one of its leaders ended this step.
        const bool full = static_cast<int64_t>(finished_[input].size()) >= K;
        if (saw_eos && (full || step_ >= cfg_.max_len)) keep[a] = 0;
        if (step_ >= cfg_.max_len) keep[a] = 0;
    }

    StepPlan plan;
    std::vector<int64_t> new_tokens, new_active;
    std::vector<float> new_scores, new_live;
    for (int64_t a = 0; a < n_active; ++a) {
        if (!keep[a]) continue;
        new_active.push_back(active_[a]);
        const int64_t base = a * width;
        int64_t taken = 0;
        // Each group returns distinct tokens per beam, so at most one EOS per beam: at least K
        // of the 2K candidates are not EOS and fairseq's "blacklist" never engages.
        for (int64_t c = 0; c < width && taken < K; ++c) {
            if (finite_eos(base + c)) continue;
            const int64_t src = a * K + cand_beams[base + c];
            plan.source_rows.push_back(src);
            plan.tokens.push_back(cand_tokens[base + c]);
            new_live.push_back(cand_scores[base + c]);
            const size_t off = new_tokens.size();
            new_tokens.insert(new_tokens.end(), tokens_.begin() + src * hist, tokens_.begin() + src * hist + step_);
            new_tokens.resize(off + static_cast<size_t>(hist), 0);
            new_tokens[off + step_] = cand_tokens[base + c];
            const size_t soff = new_scores.size();
            new_scores.insert(new_scores.end(), scores_.begin() + src * hist, scores_.begin() + src * hist + step_);
            new_scores.resize(soff + static_cast<size_t>(hist), 0.f);
            new_scores[soff + step_] = cand_scores[base + c];
            ++taken;
        }
        if (taken < K) throw std::logic_error("fewer live candidates than beams (fairseq blacklist case)");
    }
    tokens_.swap(new_tokens);
    scores_.swap(new_scores);
    live_scores_.swap(new_live);
    active_.swap(new_active);
    ++step_;
    plan.active_inputs = active_;
    plan.done = active_.empty();
    return plan;
}

std::vector<Hypothesis> BeamBookkeeper::results(int64_t input) const {
    if (input < 0 || input >= static_cast<int64_t>(finished_.size()))
        throw std::out_of_range("input index out of range");
    std::vector<Hypothesis> out = finished_[static_cast<size_t>(input)];
    std::stable_sort(out.begin(), out.end(),
                     [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
    return out;
}

}  // namespace quals
