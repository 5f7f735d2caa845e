// Python face of the search: the pure step function and the `DiverseBeamSearch` decoder state.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <memory>
#include <stdexcept>

#include "bindings/array_checks.h"
#include "bindings/registry.h"
#include "hypotheses.h"
#include "search.h"

namespace quals::bindings {

namespace {

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          heap->data(), owner);
}

py::tuple hypothesis_tuple(Hypothesis&& h) {
    const float score = h.score;
    return py::make_tuple(to_numpy(std::move(h.tokens)), to_numpy(std::move(h.positional_scores)), score);
}

// Wraps the pure step and the bookkeeping so that a decode step is one call with the GIL released.
class PyDiverseBeamSearch {
public:
    PyDiverseBeamSearch(int64_t batch, const SearchConfig& cfg) : cfg_(cfg), book_(cfg, batch) {}

    py::tuple step(const py::array& lprobs) {
        if (book_.done()) throw std::logic_error("search already finished: every input is done");
        const int64_t rows = book_.num_active() * cfg_.num_beams;
        const int64_t stride = check_rows<float>(lprobs, "lprobs", 2);
        if (lprobs.shape(0) != rows || lprobs.shape(1) != cfg_.vocab_size)
            throw py::value_error("lprobs must have shape (" + std::to_string(rows) + ", " +
                                  std::to_string(cfg_.vocab_size) + ") = (active inputs x num_beams, vocab), got (" +
                                  std::to_string(lprobs.shape(0)) + ", " + std::to_string(lprobs.shape(1)) + ")");
        const float* data = static_cast<const float*>(lprobs.data());
        StepPlan plan;
        {
            py::gil_scoped_release release;
            const int64_t step = book_.step();
            const int64_t width = cfg_.num_candidates(step);
            const int64_t n = book_.num_active();
            scores_.resize(static_cast<size_t>(n * width));
            tokens_.resize(scores_.size());
            beams_.resize(scores_.size());
            diverse_beam_step(cfg_, step, n, data, stride, book_.live_scores().data(), StepMask::for_step(cfg_, step),
                              scores_.data(), tokens_.data(), beams_.data());
            plan = book_.advance(scores_.data(), tokens_.data(), beams_.data(), width);
        }
        return py::make_tuple(to_numpy(std::move(plan.source_rows)), to_numpy(std::move(plan.tokens)), plan.done);
    }

    py::list results(int64_t input) const {
        py::list out;
        for (auto& h : book_.results(input)) out.append(hypothesis_tuple(std::move(h)));
        return out;
    }

    int64_t step_index() const { return book_.step(); }
    bool done() const { return book_.done(); }
    py::array_t<int64_t> active_inputs() const {
        return to_numpy(std::vector<int64_t>(book_.active_inputs()));
    }

private:
    SearchConfig cfg_;
    BeamBookkeeper book_;
    std::vector<float> scores_;
    std::vector<int64_t> tokens_, beams_;
};

SearchConfig make_config(int64_t vocab_size, int64_t num_beams, int64_t num_groups, float diversity_strength,
                         int64_t pad_id, int64_t eos_id, int64_t min_len, int64_t max_len, float len_penalty) {
    SearchConfig cfg;
    cfg.vocab_size = vocab_size;
    cfg.num_beams = num_beams;
    cfg.num_groups = num_groups;
    cfg.diversity_strength = diversity_strength;
    cfg.pad_id = pad_id;
    cfg.eos_id = eos_id;
    cfg.min_len = min_len;
    cfg.max_len = max_len;
    cfg.len_penalty = len_penalty;
    try {
        cfg.validate();
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    return cfg;
}

py::tuple py_diverse_beam_step(int64_t step, const py::array& lprobs, const py::object& prev_scores,
                               int64_t num_groups, float diversity_strength, int64_t pad_id, int64_t eos_id,
                               int64_t min_len, int64_t max_len) {
    const int64_t stride = check_rows<float>(lprobs, "lprobs", 3);
    const int64_t batch = lprobs.shape(0), K = lprobs.shape(1), V = lprobs.shape(2);
    // Masking is optional here so that the pure step can be compared with a reference that
    // receives already-masked log-probs.
    const bool masking = eos_id >= 0;
    SearchConfig cfg = make_config(V, K, num_groups, diversity_strength, pad_id, masking ? eos_id : 0,
                                   masking ? min_len : 0, masking ? max_len : std::numeric_limits<int32_t>::max(),
                                   1.0f);
    if (step < 0) throw py::value_error("step must be >= 0");
    const float* prev = nullptr;
    py::array prev_arr;
    if (step > 0) {
        if (prev_scores.is_none()) throw py::value_error("prev_scores is required after step 0");
        prev_arr = prev_scores.cast<py::array>();
        check_rows<float>(prev_arr, "prev_scores", 2);
        if (prev_arr.shape(0) != batch || prev_arr.shape(1) != K || prev_arr.strides(0) != K * 4)
            throw py::value_error("prev_scores must be a C-contiguous (batch, num_beams) array");
        prev = static_cast<const float*>(prev_arr.data());
    }
    const StepMask mask = masking ? StepMask::for_step(cfg, step) : StepMask::none();
    const int64_t width = cfg.num_candidates(step);
    py::array_t<float> scores({batch, width});
    py::array_t<int64_t> tokens({batch, width});
    py::array_t<int64_t> beams({batch, width});
    {
        py::gil_scoped_release release;
        diverse_beam_step(cfg, step, batch, static_cast<const float*>(lprobs.data()), stride, prev, mask,
                          scores.mutable_data(), tokens.mutable_data(), beams.mutable_data());
    }
    return py::make_tuple(scores, tokens, beams);
}

}  // namespace

void register_search(py::module_& m) {
    m.def("diverse_beam_step", &py_diverse_beam_step, py::arg("step"), py::arg("lprobs"), py::arg("prev_scores"),
          py::arg("num_groups"), py::arg("diversity_strength"), py::arg("pad_id") = -1, py::arg("eos_id") = -1,
          py::arg("min_len") = 0, py::arg("max_len") = std::numeric_limits<int32_t>::max(),
          "One diverse beam search step (pure). lprobs: float32 (batch, num_beams, vocab); prev_scores: float32 "
          "(batch, num_beams) cumulative scores, None at step 0. With eos_id >= 0 the generator's pad/min_len/max_len "
          "masks are applied while reading. Returns (scores, tokens, beams), each (batch, candidates) in fairseq's "
          "column order.");

    py::class_<PyDiverseBeamSearch>(m, "DiverseBeamSearch",
                                    "Decoder-side state of one batched diverse beam search: call step() once per "
                                    "decoder step with the log-probs of the live rows.")
        .def(py::init([](int64_t batch, int64_t vocab_size, int64_t num_beams, int64_t num_groups,
                         float diversity_strength, int64_t pad_id, int64_t eos_id, int64_t min_len, int64_t max_len,
                         float len_penalty) {
                 if (batch < 1) throw py::value_error("batch must be >= 1");
                 return std::make_unique<PyDiverseBeamSearch>(
                     batch, make_config(vocab_size, num_beams, num_groups, diversity_strength, pad_id, eos_id, min_len,
                                        max_len, len_penalty));
             }),
             py::arg("batch"), py::arg("vocab_size"), py::arg("num_beams"), py::arg("num_groups"),
             py::arg("diversity_strength"), py::arg("pad_id"), py::arg("eos_id"), py::arg("min_len"),
             py::arg("max_len"), py::arg("len_penalty") = 1.0f)
        .def("step", &PyDiverseBeamSearch::step, py::arg("lprobs"),
             "Advance one step. lprobs: float32 (active inputs x num_beams, vocab). Returns (source_rows, tokens, "
             "done): for each next-step row the current row it continues and the token it appends.")
        .def("results", &PyDiverseBeamSearch::results, py::arg("input"),
             "Finished hypotheses of one input, best first: list of (tokens, positional_scores, score).")
        .def_property_readonly("step_index", &PyDiverseBeamSearch::step_index)
        .def_property_readonly("done", &PyDiverseBeamSearch::done)
        .def_property_readonly("active_inputs", &PyDiverseBeamSearch::active_inputs);
}

}  // namespace quals::bindings
