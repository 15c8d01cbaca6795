"""Accuracy-latency curves: Pareto fronts, dominance, the PNG plot, and the bench's figures."""

import pytest

from tts_ray.eval.bench import (
    ONE_SAMPLE,
    PLAIN_VLLM,
    SEQUENTIAL_BON,
    BenchConfig,
    _service_runs,
    figures,
    measured,
)
from tts_ray.eval.plot import (
    CurvePoint,
    best_accuracy_within,
    dominance_violations,
    pareto_front,
    plot_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pt(label, latency_s, accuracy):
    return CurvePoint(label=label, latency_s=latency_s, accuracy=accuracy)


def test_pareto_front():
    points = [pt("a", 1, 0.3), pt("b", 2, 0.5), pt("c", 3, 0.4), pt("d", 2, 0.5), pt("e", 4, 0.9), pt("f", 0.5, 0.1)]
    assert [p.label for p in pareto_front(points)] == ["f", "a", "b", "d", "e"]


def test_dominance():
    ours = [pt("B=1", 1.0, 0.4), pt("B=16", 2.0, 0.8)]
    assert best_accuracy_within(ours, 1.5) == 0.4 and best_accuracy_within(ours, 0.5) is None
    assert dominance_violations(ours, {"peer": [pt("x", 1.2, 0.4), pt("y", 5, 0.8)]}) == []
    violations = dominance_violations(ours, {"peer": [pt("fast", 0.5, 0.3), pt("good", 1.5, 0.6)]})
    assert [(v["label"], v["system_accuracy_within"]) for v in violations] == [("fast", None), ("good", 0.4)]


def test_plot_is_a_valid_png(tmp_path):
    from matplotlib import image

    out = plot_curves({"tts_ray": [pt("B=1", 0.8, 0.4), pt("B=16", 1.9, 0.8)],
                       "peer": [pt("N=4", 3.0, 0.6), pt("N=1", 0.7, 0.38)]}, tmp_path / "sub" / "plot.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    pixels = image.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 0  # something was drawn
    with pytest.raises(ValueError):
        plot_curves({"empty": []}, tmp_path / "none.png")


def test_service_runs_cover_every_method_and_b():
    runs = _service_runs(BenchConfig(branches=[1, 4, 16], service_methods=["majority", "weighted_majority"]))
    labels = [(system, label) for system, label, _ in runs]
    assert labels == [("tts_ray single", "greedy B=1"), ("tts_ray single", "T=0.7 B=1"),
                      ("tts_ray majority", "B=4"), ("tts_ray majority", "B=16"),
                      ("tts_ray weighted_majority", "B=4"), ("tts_ray weighted_majority", "B=16")]
    assert runs[0][2] == {"method": "single", "branches": 1, "temperature": 0.0}
    pinned = _service_runs(BenchConfig(branches=[1, 4], service_methods=["majority"]), num_speculative_tokens=4)
    assert [fields for _, _, fields in pinned] == [
        {"method": "single", "branches": 1, "temperature": 0.0, "num_speculative_tokens": 4},
        {"method": "single", "branches": 1, "num_speculative_tokens": 4},
        {"method": "majority", "branches": 4, "num_speculative_tokens": 4}]


def test_figures_from_measurements():
    config = BenchConfig(branches=[1, 16], service_methods=["majority"])

    def m(system, label, accuracy, latency_s):
        n = 10
        return measured(system, label, [True] * round(accuracy * n) + [False] * (n - round(accuracy * n)),
                        [latency_s] * n)

    results = [m(ONE_SAMPLE, "greedy", 0.5, 1.0), m(ONE_SAMPLE, "T=0.7", 0.4, 1.0),
               m(PLAIN_VLLM, "B=1", 0.4, 1.0), m(PLAIN_VLLM, "B=16", 0.7, 2.0),
               m(SEQUENTIAL_BON, "N=1", 0.4, 1.1), m(SEQUENTIAL_BON, "N=16", 0.8, 16.0),
               m("tts_ray single", "greedy B=1", 0.5, 1.1), m("tts_ray single", "T=0.7 B=1", 0.4, 1.2),
               m("tts_ray majority", "B=16", 0.8, 2.4)]
    out = figures(results, config)
    assert out["router_overhead_ratio"] == pytest.approx(1.1)
    assert out["router_overhead_ratio_sampled"] == pytest.approx(1.2)
    assert out["branch16_over_branch1_latency"] == pytest.approx(2.0)
    assert out["speedup_vs_sequential_best_of_n"] == pytest.approx(16.0 / 2.4)
    assert out["speedup_vs_sequential_best_of_n_by_n"]["N=16"]["service_config"] == "tts_ray majority B=16"
    # the peers' 1.0 s points are faster than anything the service has; plain vLLM B=16 at 2.0 s too
    assert out["dominates_peers"] is False
    assert {v["label"] for v in out["dominance"]["violations"]} == {"greedy", "T=0.7", "B=1", "B=16"}
    assert out["dominance"]["dominates_above_service_min_latency"] is False
    # with the interleaved measurement, the headline ratio is its, the separate passes' stays beside
    paired = figures(results, config, {"ratio_of_means": 1.05})
    assert paired["router_overhead_ratio"] == 1.05
    assert paired["router_overhead_ratio_separate_passes"] == pytest.approx(1.1)



def test_first_problems_of_arith500_cover_every_level():
    from tts_ray.eval.datasets import load_dataset

    levels = [p.level for p in load_dataset("arith500", limit=10).problems]
    assert sorted(levels) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_plot_document_redraws_bench_json(tmp_path):
    from matplotlib import image

    from tts_ray.eval.bench import plot_document

    config = BenchConfig(branches=[1, 4], service_methods=["majority"])
    results = [measured(ONE_SAMPLE, "greedy", [True, False], [0.2, 0.3]),
               measured(PLAIN_VLLM, "B=4", [True, True], [0.4, 0.5]),
               measured("tts_ray single", "T=0.7 B=1", [False, True], [0.3, 0.3]),
               measured("tts_ray majority", "B=4", [True, True], [0.6, 0.5])]
    curves = {}
    for m in results:
        curves.setdefault(m.system, []).append(m.model_dump())
    document = {"curves": curves, "config": config.model_dump(mode="json"), "dataset": "arith500",
                "num_problems": 2}
    out = plot_document(document, tmp_path / "bench.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert image.imread(out).shape[2] in (3, 4)


def test_refigure_recomputes_a_saved_bench_json(tmp_path):
    import json

    from tts_ray.eval.bench import refigure

    config = BenchConfig(branches=[1, 16], service_methods=["majority"])
    results = [measured(ONE_SAMPLE, "greedy", [True, True], [1.0, 1.0]),
               measured(SEQUENTIAL_BON, "N=16", [True, False], [8.0, 8.0]),
               measured("tts_ray single", "greedy B=1", [True, True], [1.5, 1.5], temperature=0.0),
               measured("tts_ray majority", "B=16", [True, False], [2.0, 2.0], temperature=0.7)]
    curves = {}
    for m in results:
        curves.setdefault(m.system, []).append(m.model_dump())
    saved = tmp_path / "in" / "bench.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"curves": curves, "config": config.model_dump(mode="json"),
                                 "dataset": "arith500", "num_problems": 2, "router_overhead_ratio": 99.0}))
    document = refigure(saved, tmp_path / "out")
    assert document["router_overhead_ratio"] == pytest.approx(1.5)
    assert document["speedup_vs_sequential_best_of_n"] == pytest.approx(8.0 / 1.5)  # greedy B=1 is as accurate
    assert document["speedup_vs_sequential_best_of_n_sampled_only"] == pytest.approx(4.0)
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == document
    # a saved interleaved measurement keeps deciding the headline ratio
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "interleaved_b1": {"ratio_of_means": 1.25}}))
    again = refigure(saved, tmp_path / "again")
    assert again["router_overhead_ratio"] == 1.25 and again["router_overhead_ratio_separate_passes"] == 1.5
    assert (tmp_path / "out" / "bench.png").read_bytes()[:8] == PNG_MAGIC
