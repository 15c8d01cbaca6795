"""The evaluation runner against a stand-in HTTP server, its statistics, and the CLI entry points."""

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tts_ray.eval.cli import branches_arg
from tts_ray.eval.cli import main as eval_main
from tts_ray.eval.datasets import load_dataset
from tts_ray.eval.runner import (
    EvalConfig,
    EvalRequest,
    ServiceUnavailableError,
    grade_response,
    retry_after_seconds,
    run_eval,
)
from tts_ray.eval.stats import ProblemResult, mean_in_service, percentile, summarize, wilson_interval

PROBLEMS = load_dataset("arith500", limit=12).problems
GOLD = {p.problem: p.answer for p in PROBLEMS}


class FakeService(BaseHTTPRequestHandler):
    """Answers like the router: problems 0-7 right, 8-9 wrong, 10 with HTTP 408, 11 with no
    boxed answer. Records every request body. Problem i is first answered 429 (Retry-After 0)
    ``rejections.get(i, 0)`` times."""

    bodies: ClassVar[list] = []
    rejections: ClassVar[dict] = {}

    def log_message(self, *args):
        pass

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"status": "ok"}) if self.path == "/health" else self._send(404, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeService.bodies.append(body)
        problem = body["messages"][0]["content"]
        index = [p.problem for p in PROBLEMS].index(problem)
        if FakeService.rejections.get(index, 0) > 0:
            FakeService.rejections[index] -= 1
            data = json.dumps({"error": {"message": "latency_budget_s=1 cannot be met"}}).encode()
            if index == 2:  # shed by back-pressure, without a Retry-After: the client waits 1 s
                self.send_response(503)
            else:
                self.send_response(429)
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if index == 10:
            self._send(408, {"error": {"message": "no answer within latency_budget_s=1", "type": "timeout_error"}})
            return
        answer = GOLD[problem] if index < 8 else ("-1" if index < 10 else None)
        text = f"\\boxed{{{answer}}}" if answer is not None else "I do not know"
        self._send(200, {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"completion_tokens": 10 * (index + 1)},
            "tts": {"method": "majority", "answer": answer, "votes": {answer: 3.0} if answer else {},
                    "num_branches": 4, "timings_s": {"total": 0.01},
                    "speculation": {"accepted_per_step": 2.5}},
        })


@pytest.fixture
def fake_url():
    FakeService.bodies, FakeService.rejections = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_percentile_matches_linear_interpolation():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_mean_in_service_is_littles_law_over_the_run():
    # 8 clients that each spent half the 10 s inside the service: 4 at once on average
    assert mean_in_service([5.0] * 8, 10.0) == pytest.approx(4.0)
    assert mean_in_service([], 10.0) == 0.0
    with pytest.raises(ValueError):
        mean_in_service([1.0], 0.0)
    with pytest.raises(ValueError):
        mean_in_service([-1.0], 10.0)


def test_request_body_passes_tts_options_through():
    body = EvalRequest(method="auto", branches="auto", latency_budget_s=5, temperature=0.0).body("q?")
    assert body == {"messages": [{"role": "user", "content": "q?"}], "temperature": 0.0,
                    "tts": {"method": "auto", "branches": "auto", "latency_budget_s": 5.0}}
    assert "tts" not in EvalRequest().body("q?")
    assert EvalRequest(endpoint="completions").body("q?") == {"prompt": "q?"}
    with pytest.raises(ValueError):
        EvalRequest(branches=0)
    assert branches_arg("auto") == "auto" and branches_arg("16") == 16


def test_each_problem_gets_its_own_seed_the_same_in_every_run():
    import argparse

    from tts_ray.constants import EVAL_SEED_STRIDE
    from tts_ray.eval.cli import seed_arg

    request = EvalRequest(method="majority", seed=7)
    first, second = (request.body("q?", problem_id)["tts"]["seed"] for problem_id in ("a/1", "a/2"))
    assert first != second and (first - 7) % EVAL_SEED_STRIDE == (second - 7) % EVAL_SEED_STRIDE == 0
    # the seed depends on the problem's id and the base only: not on the row or the run
    assert EvalRequest(method="majority", branches=16, seed=7).problem_seed("a/1") == first
    assert EvalRequest(seed=8).problem_seed("a/1") == first + 1
    assert 0 <= EvalRequest(seed=2**62 - 1).problem_seed("x" * 50) < 2**63  # the service's limit
    assert EvalRequest().problem_seed("a/1") is None and "tts" not in EvalRequest().body("q?", "a/1")
    assert request.body("q?")["tts"]["seed"] == 7  # no id: the base as is
    with pytest.raises(ValueError):
        EvalRequest(seed=2**62)
    assert seed_arg("0") == 0
    for bad in ("-1", str(2**62), "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_arg(bad)


def test_grade_response_kinds():
    problem = PROBLEMS[0]
    plain = {"choices": [{"message": {"content": f"so \\boxed{{{problem.answer}}}"}}], "usage": {}}
    graded = grade_response(problem, 200, plain, 0.5)  # any OpenAI server: graded on choice 0
    assert graded.correct and graded.answer == problem.answer and graded.num_branches is None
    assert graded.seed_applied is None
    seeded = {**plain, "tts": {"answer": problem.answer, "num_branches": 2, "seed_applied": True}}
    graded = grade_response(problem, 200, seeded, 0.5)
    assert graded.correct and graded.num_branches == 2 and graded.seed_applied is True
    cut = {"choices": [{"message": {"content": "1 + 1 ="}, "finish_reason": "deadline"}], "usage": {}}
    graded = grade_response(problem, 200, cut, 1.0)  # the best partial answer at the deadline
    assert not graded.correct and graded.finish_reason == "deadline"
    graded = grade_response(problem, 400, {"error": {"message": "tts.branches: bad"}}, 0.1)
    assert not graded.correct and graded.error == "tts.branches: bad" and graded.status == 400
    graded = grade_response(problem, None, None, 0.1, error="ConnectError: refused")
    assert not graded.correct and graded.status is None and graded.error == "ConnectError: refused"


def test_eval_writes_consistent_files(fake_url, tmp_path):
    summary = run_eval(EvalConfig(dataset="arith500", limit=12, url=fake_url, concurrency=3, out=tmp_path,
                                  request=EvalRequest(method="majority", branches=4), progress=False))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.unique_id for p in PROBLEMS]  # dataset order
    assert [r["correct"] for r in rows] == [True] * 8 + [False] * 4
    assert rows[10]["status"] == 408 and "latency_budget_s" in rows[10]["error"]
    assert rows[11]["answer"] is None and rows[11]["status"] == 200
    assert rows[0]["tokens"] == 10 and rows[0]["num_branches"] == 4 and rows[0]["votes"] == {PROBLEMS[0].answer: 3.0}
    assert all(b["tts"] == {"method": "majority", "branches": 4} for b in FakeService.bodies)

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(summary.model_dump_json())
    assert (saved["num_problems"], saved["num_correct"], saved["num_errors"], saved["num_no_answer"]) == (12, 8, 1, 1)
    assert saved["accuracy"] == pytest.approx(8 / 12)
    assert saved["accuracy_ci95_low"] < saved["accuracy"] < saved["accuracy_ci95_high"]
    assert saved["tokens_per_problem"] == pytest.approx(sum(10 * (i + 1) for i in range(12) if i != 10) / 11)
    assert saved["latency_p50_s"] <= saved["latency_p90_s"] <= saved["latency_p99_s"]
    assert saved["requests_per_s"] == pytest.approx(12 / saved["wall_s"])
    with (tmp_path / "summary.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["num_problems"]) == 12 and int(row["num_correct"]) == 8


def test_module_entry_point(fake_url, tmp_path, capsys):
    out = tmp_path / "run"
    assert eval_main(["--dataset", "arith500", "--limit", "4", "--url", fake_url, "--branches", "auto",
                      "--out", str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["num_correct"] == 4
    assert FakeService.bodies[0]["tts"] == {"branches": "auto"}
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_unreachable_service_and_bad_dataset_are_clear_errors(tmp_path, capsys):
    assert eval_main(["--url", "http://127.0.0.1:9", "--limit", "1", "--out", str(tmp_path)]) == 2
    assert "no service at http://127.0.0.1:9" in capsys.readouterr().err
    assert eval_main(["--dataset", str(tmp_path / "nope.jsonl"), "--url", "http://x", "--out", str(tmp_path)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    with pytest.raises(ServiceUnavailableError):
        run_eval(EvalConfig(limit=1, url="http://127.0.0.1:9", out=tmp_path, progress=False))


def test_summarize_counts_errors_as_wrong():
    results = [ProblemResult(id="a", gold="1", answer="1", correct=True, latency_s=1.0, status=200, tokens=5),
               ProblemResult(id="b", gold="2", correct=False, latency_s=3.0, status=500, error="boom")]
    summary = summarize(results, wall_s=2.0, dataset="d", dataset_source="s", concurrency=2)
    assert (summary.accuracy, summary.num_errors, summary.tokens_per_problem) == (0.5, 1, 5.0)
    assert summary.latency_mean_s == 2.0 and summary.requests_per_s == 1.0
    with pytest.raises(ValueError):
        summarize(results, wall_s=0, dataset="d", dataset_source="s", concurrency=1)


def test_retry_after_header_parsing():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("0") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("-1") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None and retry_after_seconds("nan") is None


def test_rejected_problems_are_retried_after_retry_after(fake_url, tmp_path):
    # problem 0: two 429s, then answered; problem 1: three 429s, more than 3 attempts allow
    # problem 2: one 503 without Retry-After
    FakeService.rejections = {0: 2, 1: 3, 2: 1}
    run_eval(EvalConfig(dataset="arith500", limit=3, url=fake_url, concurrency=2, out=tmp_path / "a",
                        request=EvalRequest(max_attempts=3), progress=False))
    rows = [json.loads(line) for line in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert [(r["status"], r["attempts"], r["correct"]) for r in rows] == [(200, 3, True), (429, 3, False),
                                                                        (200, 2, True)]
    assert [r["retry_wait_s"] for r in rows] == [0.0, 0.0, 1.0]
    assert len(FakeService.bodies) == 3 + 3 + 2
    # without retries a 429 is the problem's result
    FakeService.rejections = {0: 1}
    run_eval(EvalConfig(dataset="arith500", limit=1, url=fake_url, concurrency=1, out=tmp_path / "b",
                        progress=False))
    (row,) = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert (row["status"], row["attempts"], row["correct"]) == (429, 1, False)
