"""``python -m tts_ray.eval`` against the real service: 20 ARITH-500 problems, every result
file written, counts consistent between them."""

import csv
import json

from tests.integration.conftest import TEST_API_KEY
from tts_ray.eval.cli import main as eval_main
from tts_ray.eval.plot import CurvePoint, plot_curves

NUM_PROBLEMS = 20


def test_eval_of_20_arith_problems_against_the_service(service_url, tmp_path, capsys):
    out = tmp_path / "eval"
    code = eval_main(["--dataset", "arith500", "--limit", str(NUM_PROBLEMS), "--url", service_url,
                      "--api-key", TEST_API_KEY,
                      "--method", "majority", "--branches", "4", "--budget", "120", "--concurrency", "4",
                      "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    with (out / "summary.csv").open() as handle:
        (csv_row,) = list(csv.DictReader(handle))

    assert len(rows) == NUM_PROBLEMS == summary["num_problems"] == int(csv_row["num_problems"])
    assert len({r["id"] for r in rows}) == NUM_PROBLEMS
    assert all(r["status"] == 200 and r["error"] is None for r in rows), [r["error"] for r in rows]
    assert summary["num_errors"] == 0
    assert summary["num_correct"] == sum(r["correct"] for r in rows) == int(csv_row["num_correct"])
    assert summary["accuracy"] == summary["num_correct"] / NUM_PROBLEMS
    assert summary["accuracy_ci95_low"] <= summary["accuracy"] <= summary["accuracy_ci95_high"]
    assert all(r["num_branches"] == 4 and r["method"] == "majority" for r in rows)
    assert all(r["tokens"] > 0 and r["latency_s"] > 0 for r in rows)
    # each graded answer is the vote's winner, and correctness is the grader's verdict on it
    for r in rows:
        if r["answer"] is not None:
            assert r["votes"][r["answer"]] == max(r["votes"].values())
        if r["answer"] == r["gold"]:
            assert r["correct"]
        if r["answer"] is None:
            assert not r["correct"]
    # majority@4 of the testbed target is well above chance on ARITH (one sample: ~38%)
    assert summary["num_correct"] >= 4
    assert summary["latency_p50_s"] <= summary["latency_p90_s"] <= summary["latency_p99_s"]
    assert summary["tokens_per_problem"] == sum(r["tokens"] for r in rows) / NUM_PROBLEMS

    png = plot_curves({"tts_ray majority": [CurvePoint(label="B=4", latency_s=summary["latency_mean_s"],
                                                       accuracy=summary["accuracy"])]}, out / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
