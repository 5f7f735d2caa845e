#include "search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace quals {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keeps the k best (score, flat index) seen so far, sorted descending. Entries arrive in
// increasing flat index, so inserting after every equal score gives "lower index wins ties",
// the order our NumPy reference documents.
class TopK {
public:
    explicit TopK(int64_t k) : k_(k) { scores_.reserve(k); index_.reserve(k); }
    void reset() { scores_.clear(); index_.clear(); }
    void push(float s, int64_t idx) {
        const int64_t n = static_cast<int64_t>(scores_.size());
        if (n == k_ && !(s > scores_.back())) return;
        int64_t pos = n;
        while (pos > 0 && s > scores_[pos - 1]) --pos;
        if (n < k_) {
            scores_.push_back(0.f);
            index_.push_back(0);
        }
        for (int64_t i = static_cast<int64_t>(scores_.size()) - 1; i > pos; --i) {
            scores_[i] = scores_[i - 1];
            index_[i] = index_[i - 1];
        }
        scores_[pos] = s;
        index_[pos] = idx;
    }
    // A cheap bound lets the scan skip most of the vocabulary without the insertion loop.
    float threshold() const {
        return static_cast<int64_t>(scores_.size()) == k_ ? scores_.back() : kNegInf;
    }
    bool full() const { return static_cast<int64_t>(scores_.size()) == k_; }
    const std::vector<float>& scores() const { return scores_; }
    const std::vector<int64_t>& indices() const { return index_; }

private:
    int64_t k_;
    std::vector<float> scores_;
    std::vector<int64_t> index_;
};

inline float masked(const float* row, int64_t v, const StepMask& m) {
    if (v == m.pad_id) return kNegInf;
    if (m.only_eos) return v == m.eos_id ? row[v] : kNegInf;
    if (m.block_eos && v == m.eos_id) return kNegInf;
    return row[v];
}
}  // namespace

int64_t SearchConfig::cands_per_group(int64_t step) const {
    const int64_t beams_seen = step == 0 ? 1 : beams_per_group();
    return std::min<int64_t>(2 * beams_per_group(), beams_seen * vocab_size - 1);
}

void SearchConfig::validate() const {
    auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
    if (num_beams < 1) fail("num_beams must be >= 1, got " + std::to_string(num_beams));
    if (num_groups < 1 || num_beams % num_groups != 0)
        fail("num_groups must divide num_beams (got num_beams=" + std::to_string(num_beams) +
             ", num_groups=" + std::to_string(num_groups) + ")");
    if (vocab_size < 3) fail("vocab_size must be >= 3, got " + std::to_string(vocab_size));
    if (eos_id < 0 || eos_id >= vocab_size) fail("eos_id out of the vocabulary");
    if (pad_id >= vocab_size) fail("pad_id out of the vocabulary");
    if (min_len < 0 || max_len < 1 || min_len > max_len)
        fail("need 0 <= min_len <= max_len and max_len >= 1 (got min_len=" + std::to_string(min_len) +
             ", max_len=" + std::to_string(max_len) + ")");
    if (!std::isfinite(diversity_strength)) fail("diversity_strength must be finite");
    if (!std::isfinite(len_penalty)) fail("len_penalty must be finite");
    // With fewer candidates than beams a group could not refill its slots.
    if (2 * beams_per_group() > vocab_size - 1)
        fail("vocabulary too small for the beams per group");
}

StepMask StepMask::for_step(const SearchConfig& cfg, int64_t step) {
    StepMask m;
    m.pad_id = cfg.pad_id;
    m.eos_id = cfg.eos_id;
    // fairseq checks the length limit first: at max_len only EOS remains even if min_len is larger.
    m.only_eos = step >= cfg.max_len;
    m.block_eos = !m.only_eos && step < cfg.min_len;
    return m;
}

void diverse_beam_step(const SearchConfig& cfg, int64_t step, int64_t batch, const float* lprobs,
                       int64_t row_stride, const float* prev_scores, const StepMask& mask,
                       float* out_scores, int64_t* out_tokens, int64_t* out_beams) {
    const int64_t K = cfg.num_beams, G = cfg.num_groups, V = cfg.vocab_size;
    const int64_t bg = cfg.beams_per_group();
    const int64_t k = cfg.cands_per_group(step);
    const int64_t width = k * G;
    // fairseq scores only the group's first beam at step 0: every beam holds the same prefix.
    const int64_t beams_scanned = step == 0 ? 1 : bg;
    const float penalty_scale = -cfg.diversity_strength;

    std::vector<float> counts(V, 0.f);
    std::vector<int64_t> touched;
    touched.reserve(static_cast<size_t>(width));
    TopK top(k);

    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t t : touched) counts[t] = 0.f;
        touched.clear();
        float* scores_row = out_scores + b * width;
        int64_t* tokens_row = out_tokens + b * width;
        int64_t* beams_row = out_beams + b * width;
        for (int64_t g = 0; g < G; ++g) {
            top.reset();
            for (int64_t lb = 0; lb < beams_scanned; ++lb) {
                const int64_t slot = lb * G + g;
                const int64_t row = b * K + slot;
                const float* lp = lprobs + row * row_stride;
                const float prev = step == 0 ? 0.f : prev_scores[row];
                const int64_t base = lb * V;
                float threshold = top.threshold();
                for (int64_t v = 0; v < V; ++v) {
                    // Masks and penalties only lower a score and float addition is monotonic, so
                    // the raw score bounds the final one: most of the vocabulary stops here.
                    const float bound = step == 0 ? lp[v] : lp[v] + prev;
                    if (top.full() && !(bound > threshold)) continue;
                    float s = masked(lp, v, mask);
                    // Same float operations in the same order as fairseq:
                    // (lprobs + strength * diversity) then + cumulative score.
                    if (g > 0) s = s + penalty_scale * counts[v];
                    if (step > 0) s = s + prev;
                    if (top.full() && !(s > threshold)) continue;
                    top.push(s, base + v);
                    threshold = top.threshold();
                }
            }
            const auto& ts = top.scores();
            const auto& ti = top.indices();
            for (int64_t j = 0; j < k; ++j) {
                const int64_t col = j * G + g;
                const int64_t token = ti[j] % V;
                scores_row[col] = ts[j];
                tokens_row[col] = token;
                beams_row[col] = (ti[j] / V) * G + g;
                if (counts[token] == 0.f) touched.push_back(token);
                counts[token] += 1.f;
            }
        }
    }
}

}  // namespace quals
