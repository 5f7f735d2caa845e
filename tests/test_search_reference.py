"""The NumPy reference search against hand-made tables and the original fairseq's golden
vectors (shared/oracle/dbs_golden.json, made with the tiny BART in shared/oracle/model)."""

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT.parent / "shared" / "oracle"


def _load_reference():
    # The package __init__ may import the C++ extension, which need not be built for the
    # reference to be usable; fall back to loading the module file on its own.
    try:
        return importlib.import_module("quals_fast.search_reference")
    except ImportError:
        path = ROOT / "quals_fast" / "search_reference.py"
        spec = importlib.util.spec_from_file_location("_quals_search_reference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module


ref = _load_reference()
NEG_INF = -np.inf


def _table(rows):
    return np.asarray(rows, dtype=np.float32)


def test_step0_uses_first_beam_only_and_interleaves_groups():
    # K=4, G=2: group 0 owns slots 0 and 2, group 1 owns slots 1 and 3. At step 0 only
    # slots 0 and 1 are read; the distinct garbage in slots 2 and 3 must be ignored.
    V = 6
    lp = np.full((1, 4, V), -10.0, dtype=np.float32)
    lp[0, 0] = [-5, -4, -3, -2, -1, -0.5]
    lp[0, 1] = [-0.25, -5, -4, -3, -2, -1]
    lp[0, 2] = 0.0
    lp[0, 3] = 0.0
    scores, tokens, beams = ref.diverse_beam_step(0, lp, None, num_groups=2, diversity_strength=0.5)
    # 4 candidates per group (2 * bg), column = rank * G + group.
    assert tokens.tolist() == [[5, 0, 4, 5, 3, 4, 2, 3]]
    # Group 1 pays 0.5 for tokens 5, 4, 3, 2 that group 0 chose.
    np.testing.assert_array_equal(
        scores, _table([[-0.5, -0.25, -1, -1.5, -2, -2.5, -3, -3.5]])
    )
    assert beams.tolist() == [[0, 1, 0, 1, 0, 1, 0, 1]]
    assert scores.dtype == np.float32 and tokens.dtype == np.int64 and beams.dtype == np.int64


def test_diversity_counts_every_candidate_of_earlier_groups():
    # Three groups of one beam, 2 candidates each; a token costs the strength once per
    # earlier group that chose it this step (eos and runners-up included), and the
    # penalty goes in before the beam's cumulative score. Dyadic values keep fp32 exact.
    V = 5
    row = [-1.0, NEG_INF, -0.125, -0.25, -3.0]  # token 2 plays eos, token 1 pad
    lp = _table([[row, row, row]])
    prev = _table([[-1.0, -2.0, -0.5]])
    scores, tokens, beams = ref.diverse_beam_step(3, lp, prev, num_groups=3, diversity_strength=1.0)
    # group 0: 2 (-1.125), 3 (-1.25).
    # group 1: 2 and 3 pay 1 -> 0 (-3), 2 (-3.125).
    # group 2: 2 pays 2, 0 and 3 pay 1 -> 3 (-1.75), 0 (-2.5).
    assert tokens.tolist() == [[2, 0, 3, 3, 2, 0]]
    np.testing.assert_array_equal(scores, _table([[-1.125, -3, -1.75, -1.25, -3.125, -2.5]]))
    assert beams.tolist() == [[0, 1, 2, 0, 1, 2]]


def test_penalty_then_cumulative_in_float32_and_ties_to_lower_index():
    # Within a group, beams are flattened as beam * V + token; equal scores go to the
    # lower flat index. K=2, G=1: plain beam search, 4 candidates.
    lp = _table([[[-1.0, -2.0, -1.0], [-0.5, -1.5, -0.5]]])
    prev = _table([[0.0, -0.5]])
    scores, tokens, beams = ref.diverse_beam_step(1, lp, prev, num_groups=1, diversity_strength=0.5)
    assert tokens.tolist() == [[0, 2, 0, 2]]
    assert beams.tolist() == [[0, 0, 1, 1]]
    np.testing.assert_array_equal(scores, _table([[-1, -1, -1, -1]]))
    # fp32 order: (lp + (-s) * count) + prev. For these values the two other orders
    # give results one ulp either side.
    lp2 = np.full((1, 2, 4), -50.0, dtype=np.float32)
    lp2[0, :, 3] = np.float32(-0.8021826)
    prev2 = _table([[-0.7202722, -0.7202722]])
    s2, t2, _ = ref.diverse_beam_step(1, lp2, prev2, num_groups=2, diversity_strength=0.3)
    lp_, prev_, pen = np.float32(-0.8021826), np.float32(-0.7202722), np.float32(-0.3)
    assert t2[0, 1] == 3
    assert s2[0, 1] == (lp_ + pen * np.float32(1)) + prev_
    assert s2[0, 1] != lp_ + (pen + prev_) and s2[0, 1] != (lp_ + prev_) + pen


def test_generate_bookkeeping_on_random_table():
    # Strong eos bias: many hypotheses end early; inputs finish at different steps.
    step_fn = ref.random_table_step_fn(7, 24, eos_id=2, eos_bias=1.0, eos_slope=0.4)
    out = ref.generate_reference(
        step_fn, 3, num_beams=6, num_groups=3, diversity_strength=0.5, min_len=2,
        max_len=12, pad_id=1, eos_id=2, decoder_start_id=2,
    )
    assert len(out) == 3
    for hypos in out:
        assert len(hypos) == 6
        lengths = {len(h.tokens) for h in hypos}
        assert min(lengths) >= 3 and max(lengths) <= 13
        scores = [float(h.score) for h in hypos]
        assert scores == sorted(scores, reverse=True)
        for h in hypos:
            assert h.tokens[-1] == 2 and not (h.tokens[:-1] == 2).any()
            assert not (h.tokens == 1).any()
            total = np.float32(h.positional_scores.astype(np.float64).sum())
            assert abs(total / len(h.tokens) - h.score) < 1e-5
            assert h.unnormalized_score == float(h.score) * len(h.tokens)
    # Inputs are independent: decoding input 0 alone (a fresh table of the same seed, no
    # other inputs to drop from the batch) gives the same hypotheses and scores.
    alone = ref.generate_reference(
        ref.random_table_step_fn(7, 24, eos_id=2, eos_bias=1.0, eos_slope=0.4), 1,
        num_beams=6, num_groups=3, min_len=2, max_len=12, pad_id=1, eos_id=2,
        decoder_start_id=2,
    )[0]
    assert [h.tokens.tolist() for h in alone] == [h.tokens.tolist() for h in out[0]]
    assert [h.score for h in alone] == [h.score for h in out[0]]


def _golden_results(torch, transformers, cfg, cases):
    model = transformers.BartForConditionalGeneration.from_pretrained(
        ORACLE / "model", local_files_only=True, dtype=torch.float32
    ).eval()
    K = cfg["beam"]
    with torch.inference_mode():
        # Encoder once per input, as the golden adapter did; the decoder is rerun over the
        # whole prefix every step (no cache). Inputs stay unpadded, one decoder call each.
        encoded = [
            model.get_encoder()(input_ids=torch.tensor([c["input_ids"]])).last_hidden_state
            for c in cases
        ]

        def step_fn(active_inputs, prefixes):
            out = []
            for i, a in enumerate(active_inputs):
                rows = torch.from_numpy(prefixes[i * K : (i + 1) * K])
                logits = model(
                    encoder_outputs=(encoded[a].expand(K, -1, -1),),
                    decoder_input_ids=rows,
                    use_cache=False,
                ).logits
                out.append(torch.log_softmax(logits[:, -1].float(), dim=-1))
            return torch.cat(out).numpy()

        # All cases in one batch, so inputs also finish and leave the batch at different
        # steps (the golden vectors were made one input at a time).
        return ref.generate_reference(
            step_fn, len(cases), num_beams=K, num_groups=cfg["diverse_beam_groups"],
            diversity_strength=cfg["diverse_beam_strength"], min_len=cfg["min_len"],
            max_len=cfg["max_len_b"], pad_id=model.config.pad_token_id,
            eos_id=model.config.eos_token_id,
            decoder_start_id=model.config.decoder_start_token_id,
        )


@pytest.mark.skipif(not (ORACLE / "dbs_golden.json").exists(), reason=f"no oracle folder at {ORACLE}")
def test_matches_fairseq_golden_vectors():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    golden = json.loads((ORACLE / "dbs_golden.json").read_text())
    cfg = golden["config"]
    cases = golden["cases"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores; the model is tiny
    try:
        results = _golden_results(torch, transformers, cfg, cases)
    finally:
        torch.set_num_threads(threads)

    worst = 0.0
    for case, hypos in zip(cases, results):
        want = case["hypotheses"]
        assert [h.tokens.tolist() for h in hypos] == [w["tokens"] for w in want], case["stream_index"]
        for h, w in zip(hypos, want):
            worst = max(
                worst,
                abs(float(h.score) - w["score"]),
                float(np.abs(h.positional_scores - np.asarray(w["positional_scores"])).max()),
                abs(h.unnormalized_score - w["unnormalized_score"]) / len(h.tokens),
            )
    print(f"golden: {len(cases)} cases exact, max score diff {worst:.3g}")
    assert worst < 1e-4
