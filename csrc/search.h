// Diverse beam search step (fairseq DiverseBeamSearch over BeamSearch, Hamming diversity),
// as a pure function over arrays. Finished-hypothesis bookkeeping lives in hypotheses.h.
#pragma once
#include <cstdint>
#include <vector>

namespace quals {

struct SearchConfig {
    int64_t num_beams = 60;
    int64_t num_groups = 60;
    float diversity_strength = 0.5f;
    int64_t vocab_size = 0;
    int64_t pad_id = 1;
    int64_t eos_id = 2;
    int64_t min_len = 8;
    int64_t max_len = 60;
    float len_penalty = 1.0f;

    int64_t beams_per_group() const { return num_beams / num_groups; }
    // fairseq BeamSearch takes 2x its beams per group, but never the whole row: that would
    // reach pad, which is -inf.
    int64_t cands_per_group(int64_t step) const;
    int64_t num_candidates(int64_t step) const { return cands_per_group(step) * num_groups; }
    void validate() const;  // throws std::invalid_argument
};

// Which entries of a log-prob row the generator forces to -inf at a given step, applied while
// reading so the caller's buffer is never written (it may be a read-only view of a tensor).
struct StepMask {
    int64_t pad_id = -1;     // always -inf (no pad when < 0)
    int64_t eos_id = -1;
    bool block_eos = false;  // step < min_len
    bool only_eos = false;   // step >= max_len
    static StepMask none() { return StepMask{}; }
    static StepMask for_step(const SearchConfig& cfg, int64_t step);
};

// One search step for `batch` inputs.
//   lprobs:      [batch * num_beams, vocab] rows, `row_stride` floats apart
//   prev_scores: [batch * num_beams] cumulative scores of the live beams (ignored at step 0)
//   outputs:     [batch, num_candidates(step)] each, in fairseq's column order
//                (column = rank * num_groups + group).
// Ties between equal scores go to the lower flat index (beam * vocab + token).
void diverse_beam_step(const SearchConfig& cfg, int64_t step, int64_t batch, const float* lprobs,
                       int64_t row_stride, const float* prev_scores, const StepMask& mask,
                       float* out_scores, int64_t* out_tokens, int64_t* out_beams);

}  // namespace quals
