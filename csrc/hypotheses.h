// Finished-hypothesis bookkeeping of fairseq's SequenceGenerator for the diverse beam search:
// token and score histories of the live beams, the per-input finished pools, the choice of the
// next live beams, and removal of finished inputs from the batch.
#pragma once
#include <cstdint>
#include <vector>

#include "search.h"

namespace quals {

struct Hypothesis {
    std::vector<int64_t> tokens;          // generated ids, final EOS included, start token excluded
    std::vector<float> positional_scores;  // per token, diversity penalties included
    float score = 0.f;                     // cumulative score / length ** len_penalty
};

// What the backend needs to run the next decoder step.
struct StepPlan {
    // For each row of the next step: the row of the current step it continues (index into the
    // rows the backend just scored). Rows of finished inputs are gone.
    std::vector<int64_t> source_rows;
    std::vector<int64_t> tokens;          // the token each next-step row appends
    std::vector<int64_t> active_inputs;   // original input index of each remaining input
    bool done = false;
};

class BeamBookkeeper {
public:
    BeamBookkeeper(const SearchConfig& cfg, int64_t batch);

    int64_t num_active() const { return static_cast<int64_t>(active_.size()); }
    const std::vector<int64_t>& active_inputs() const { return active_; }
    const std::vector<float>& live_scores() const { return live_scores_; }  // [rows] at step-1
    int64_t step() const { return step_; }
    bool done() const { return active_.empty(); }

    // Consumes the candidates of the current step ([num_active, width] in column order),
    // finalizes EOS leaders, picks the next live beams and advances the step counter.
    StepPlan advance(const float* cand_scores, const int64_t* cand_tokens, const int64_t* cand_beams,
                     int64_t width);

    // Finished hypotheses of one input, best first (stable for equal scores).
    std::vector<Hypothesis> results(int64_t input) const;

private:
    void finalize(int64_t input, int64_t row, int64_t eos_token, float eos_score);

    SearchConfig cfg_;
    int64_t step_ = 0;
    std::vector<int64_t> active_;
    // Row-major histories of the live rows: tokens_[row * (max_len + 1) + t] is the token
    // generated at step t; scores_ likewise holds the cumulative score after step t.
    std::vector<int64_t> tokens_;
    std::vector<float> scores_;
    std::vector<float> live_scores_;
    std::vector<std::vector<Hypothesis>> finished_;
};

}  // namespace quals
