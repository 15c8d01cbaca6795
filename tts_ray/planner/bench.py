"""``tts-ray bench-planner``: the planner's figures through the real service, printed and
written to ``bench/results/planner.json``.

At concurrency C over the same problems, for each latency budget: every fixed (B, k) of a
grid and the auto planner (``branches: "auto"``, ``num_speculative_tokens: "auto"``), all
with majority voting. Then majority at B branches with and without early stopping under a
loose budget. Each of the C clients sends its next problem when the last is answered; with
``max_attempts`` > 1 (the CLI's default is 3) a client answered 429 waits the Retry-After and
sends the same problem again. Figures:

- ``p99_over_budget_ms``: 99th percentile of (response time - budget) over every budgeted
  request of the run, in ms (negative: answers came before their deadline);
- ``auto_gap_points``: the largest, over budgets, of (best fixed accuracy - auto accuracy)
  in accuracy points (<= 0: auto matched or beat every fixed configuration), and
  ``auto_gap_ci95_points``, that budget's gap's 95% interval as for two independent runs
  (wider than a paired one on the same problems, and not corrected for picking the best of
  the fixed rows after the fact); with ``--repeats`` R > 1, accuracies are means over R runs
  of the sweep, and ``auto_gap_points_heldout`` is the largest gap to the configuration
  chosen on the other repeats (uninflated by the luck of the pick);
- ``early_stop_token_saving`` and ``early_stop_accuracy_drop_points``;
- the latency model's prediction error as the service reports it (``/v1/tts/status``).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tts_ray.constants import BENCH_REPEAT_SEED_STRIDE, MAX_BENCH_REPEATS, MAX_EVAL_SEED
from tts_ray.eval.datasets import Problem, load_dataset
from tts_ray.eval.runner import EvalRequest, evaluate
from tts_ray.eval.stats import mean_in_service, percentile


def _run(problems: Sequence[Problem], url: str, concurrency: int, label: str,
         results_out: list | None = None, max_attempts: int = 1, seed: int | None = None,
         **tts) -> dict[str, Any]:
    """One configuration over ``problems``: its row (accuracy, latency, 429s, retries, plans,
    the latency model's error); the per-problem results are appended to ``results_out`` when
    given. A 429 is retried after its Retry-After up to ``max_attempts`` attempts in all."""
    request = EvalRequest(method="majority", max_attempts=max_attempts, seed=seed, **tts)
    results, wall_s = asyncio.run(evaluate(problems, url, request, concurrency=concurrency, progress=False,
                                           desc=label))
    if results_out is not None:
        results_out.extend(results)
    ok = [r for r in results if r.status == 200]
    # The latency model's error on this row, as the client saw it: (latency - predicted) / predicted.
    errors = [(r.latency_s - r.plan["predicted_s"]) / r.plan["predicted_s"]
              for r in ok if r.plan and r.plan.get("predicted_s")]
    # The planner's expected accuracy of each answered plan (auto rows), per problem.
    expected = [r.plan.get("expected_accuracy") if r.status == 200 and r.plan else None for r in results]
    known = [e for e in expected if e is not None]
    row = {
        "label": label, **tts,
        "accuracy": sum(r.correct for r in results) / len(results),
        "requests": len(results), "answered": len(ok),
        "rejected_429": sum(r.status == 429 for r in results),  # after the last attempt
        "retried": sum(r.attempts > 1 for r in results),
        "attempts_mean": sum(r.attempts for r in results) / len(results),
        # answered with the best partial answer: no branch finished before the deadline
        "answered_partial": sum(r.finish_reason == "deadline" for r in ok),
        "errors": sum(r.status not in (200, 429) for r in results),
        # answered requests the service sampled with their seed: the rows' common random numbers
        "seeded": sum(bool(r.seed_applied) for r in ok),
        "latency_p50_s": percentile([r.latency_s for r in results], 50),
        "latency_p99_s": percentile([r.latency_s for r in results], 99),
        "tokens_per_problem": sum(r.tokens or 0 for r in ok) / max(1, len(ok)),
        "wall_s": wall_s,
        # how many of the row's requests were inside the service at once, on average: a row
        # whose 429s hold clients back in their Retry-After waits decodes fewer at once
        "requests_in_service_mean": mean_in_service([r.latency_s for r in results], wall_s),
        # what the planner chose (pool, B) and how often: explains an auto row's accuracy
        "plans": dict(Counter(f"{r.plan['pool']}:B={r.plan['num_branches']}" for r in ok if r.plan)),
        "prediction_error_median_abs": percentile([abs(e) for e in errors], 50),
        "prediction_error_mean_signed": sum(errors) / len(errors) if errors else None,
        "expected_accuracy_mean": sum(known) / len(known) if known else None,
        "accuracy_of_answered": sum(r.correct for r in ok) / len(ok) if ok else None,
        "latencies_s": [round(r.latency_s, 4) for r in results],
        "correct": [int(r.correct) for r in results],  # per problem, in dataset order (pairs rows)
        # per problem: the plan that ran ("pool:B", None when rejected) and whether the deadline
        # cut it (what a row's accuracy is made of)
        "plan_per_problem": [f"{r.plan['pool']}:{r.plan['num_branches']}" if r.status == 200 and r.plan else None
                             for r in results],
        "cut_per_problem": [int(r.status == 200 and r.finish_reason == "deadline") for r in results],
        # the branches the planner let each auto plan take (its fair share): what bounded B
        "fair_share_per_problem": [r.plan.get("fair_share") if r.status == 200 and r.plan else None
                                   for r in results],
        "predicted_s_per_problem": [round(r.plan["predicted_s"], 4) if r.status == 200 and r.plan
                                    and r.plan.get("predicted_s") else None for r in results],
        # the planner's expected accuracy of each plan (auto rows), against what came of it:
        # whether the calibrated accuracy the plans were ranked by holds under this load
        "expected_accuracy_per_problem": [None if e is None else round(e, 4) for e in expected],
        # the keeper's learned state right after the row: what the next row starts from
        "keeper_after": _keeper_snapshot(url),
    }
    print(f"{label:>28}: acc {row['accuracy']:.3f}  p50 {row['latency_p50_s']:.2f}s  "
          f"p99 {row['latency_p99_s']:.2f}s  tokens {row['tokens_per_problem']:.0f}  "
          f"429 {row['rejected_429']}  retried {row['retried']}  partial {row['answered_partial']}  "
          f"in service {row['requests_in_service_mean']:.1f}  errors {row['errors']}", flush=True)
    return row


def _keeper_snapshot(url: str) -> dict[str, Any] | None:
    """The keeper's learned margin and, per pool, its speed factors (at the load now and per
    band), prediction error, latency correction, speed spread, group slowdown and serving
    overhead per branch now (None if status fails)."""
    import httpx

    try:
        status = _status(url)
    except (httpx.HTTPError, ValueError):  # a diagnostic: the row stands without it
        return None
    return {"merge_margin_s": status.get("merge_margin_s"),
            "speed_factor": {name: p.get("speed_factor") for name, p in status.get("pools", {}).items()},
            "speed_factor_by_concurrency": {name: p.get("speed_factor_by_concurrency")
                                            for name, p in status.get("pools", {}).items()},
            "prediction_error_by_pool": {name: p.get("prediction_error")
                                         for name, p in status.get("pools", {}).items()},
            "latency_correction": {name: p.get("latency_correction") for name, p in status.get("pools", {}).items()},
            "speed_spread": {name: p.get("speed_spread") for name, p in status.get("pools", {}).items()},
            "group_slowdown": {name: p.get("group_slowdown") for name, p in status.get("pools", {}).items()},
            "branch_overhead_s": {name: p.get("branch_overhead_s") for name, p in status.get("pools", {}).items()}}


def _status(url: str) -> dict[str, Any]:
    import httpx

    key = EvalRequest().api_key  # $TTS_RAY_API_KEY, as the bench's requests use
    return httpx.get(f"{url}/v1/tts/status", timeout=30,
                     headers={"Authorization": f"Bearer {key}"} if key else None).json()


def paired_early_stop(results: Sequence[Any], problems: Sequence[Problem], rule: dict[str, Any] | None,
                      branches: int, orders: int = 16) -> dict[str, Any]:
    """Replay the service's early-stopping ``rule`` (``/v1/tts/status``'s ``early_stop_rule``)
    on the branches of a run without stopping (``results``, one per problem, with
    ``branch_answers`` and ``branch_tokens``), in ``orders`` random orders per problem
    (:func:`tts_ray.planner.early_stop.simulate`). Problems with fewer than ``branches``
    answered branches are left out (counted in ``skipped``). Returns simulate's figures, or
    ``{}`` without a rule or usable problems."""
    from tts_ray.grading import is_equivalent, normalize_answer
    from tts_ray.planner.early_stop import EarlyStopRule, simulate

    if not rule:
        return {}
    gold = {p.unique_id: p.answer for p in problems}
    samples, skipped = [], 0
    for r in results:
        answers = (r.branch_answers or [])[:branches]
        if len(answers) < branches or r.id not in gold:
            skipped += 1
            continue
        samples.append({"answers": [normalize_answer(a) if a is not None else None for a in answers],
                        "correct": [a is not None and is_equivalent(a, gold[r.id]) for a in answers],
                        "lengths": (r.branch_tokens or [1] * branches)[:branches]})
    if not samples:
        return {}
    replay = simulate(samples, EarlyStopRule(window=rule["window"], confidence=rule["confidence"],
                                             criterion=rule["criterion"]), branches, orders=orders)
    return {**replay, "problems": len(samples), "skipped": skipped, "orders": orders}


def _paired_difference_ci95_points(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """95% interval (points) of accuracy(a) - accuracy(b) for two rows over the same problems,
    from the per-problem differences (``correct`` lists in the same order): a problem's
    difficulty is shared by both rows, so only the problems they answer differently count.

    Raises:
        ValueError: the rows do not cover the same number of problems.
    """
    return _paired_ci95_over_repeats([(a, b)])


def _paired_ci95_over_repeats(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> list[float]:
    """95% interval (points) of the mean over repeats of accuracy(a) - accuracy(b), for pairs
    of rows (one pair per repeat) over the same problems in the same order: each problem's
    difference is averaged over the repeats first, so a problem counts once however often it
    ran (its difficulty is shared by every repeat, which are not independent draws of it).

    Raises:
        ValueError: no pairs, or rows that do not cover the same number of problems.
    """
    if not pairs:
        raise ValueError("no rows to compare")
    n = len(pairs[0][0]["correct"])
    for a, b in pairs:
        if len(a["correct"]) != n or len(b["correct"]) != n:
            raise ValueError(f"rows over different problems: {len(a['correct'])} and {len(b['correct'])} "
                             f"against {n}")
    diffs = [sum(a["correct"][i] - b["correct"][i] for a, b in pairs) / len(pairs) for i in range(n)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    half = 1.96 * math.sqrt(variance / n)
    return [round((mean - half) * 100, 2), round((mean + half) * 100, 2)]


def summarize_budget(budget_s: float, repeats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One budget's rows over the repeats of the sweep (each ``{"fixed": [rows], "auto": row}``,
    the fixed rows in the same (B, k) order every time): each configuration's accuracy per
    repeat and mean, and the auto planner's gap to the best fixed configuration, two ways:

    - ``gap_points``: best mean over the fixed configurations less auto's mean. Picking the
      best after the fact favours the luckiest row: when the rows are close, the maximum of
      noisy means sits above the best configuration's true accuracy, so this overstates the
      gap (of one run on the CPU testbed, the same row moved by up to 6 points between runs);
    - ``gap_points_heldout`` (two repeats or more; else None): in each repeat, auto against
      the fixed configuration best on the *other* repeats, averaged over the repeats. The
      choice and its measurement use different runs, so the luck of the pick does not count.

    Intervals are paired over the problems (see :func:`_paired_ci95_over_repeats`).

    Raises:
        ValueError: no repeats, or repeats that ran different fixed grids or problems.
    """
    if not repeats:
        raise ValueError("no repeats to summarize")
    configs = [(r["branches"], r["num_speculative_tokens"]) for r in repeats[0]["fixed"]]
    for rep in repeats[1:]:
        if [(r["branches"], r["num_speculative_tokens"]) for r in rep["fixed"]] != configs:
            raise ValueError("the repeats ran different fixed (B, k) grids")
    runs = len(repeats)
    by_config = {c: [rep["fixed"][i] for rep in repeats] for i, c in enumerate(configs)}
    autos = [rep["auto"] for rep in repeats]

    def mean(rows: Sequence[dict[str, Any]]) -> float:
        return sum(r["accuracy"] for r in rows) / len(rows)

    best = max(configs, key=lambda c: mean(by_config[c]))
    summary: dict[str, Any] = {
        "budget_s": budget_s, "repeats": list(repeats),
        "accuracy_by_repeat": {**{f"B={b} k={k}": [r["accuracy"] for r in by_config[b, k]] for b, k in configs},
                               "auto": [r["accuracy"] for r in autos]},
        "best_fixed": {"branches": best[0], "num_speculative_tokens": best[1], "accuracy": mean(by_config[best])},
        "auto_accuracy": mean(autos),
        "gap_points": (mean(by_config[best]) - mean(autos)) * 100,
        # as for two independent runs of runs x problems each (wider than the paired interval)
        "gap_ci95_points": _difference_ci95_points(
            {"accuracy": mean(by_config[best]), "requests": sum(r["requests"] for r in by_config[best])},
            {"accuracy": mean(autos), "requests": sum(r["requests"] for r in autos)}),
        "gap_ci95_points_paired": _paired_ci95_over_repeats(list(zip(by_config[best], autos))),
        "gap_points_heldout": None, "gap_ci95_points_heldout": None, "heldout_choices": None,
    }
    if runs >= 2:
        chosen = [max(configs, key=lambda c: mean([by_config[c][j] for j in range(runs) if j != i]))
                  for i in range(runs)]
        pairs = [(by_config[c][i], autos[i]) for i, c in enumerate(chosen)]
        summary.update(gap_points_heldout=sum(a["accuracy"] - b["accuracy"] for a, b in pairs) / runs * 100,
                       gap_ci95_points_heldout=_paired_ci95_over_repeats(pairs),
                       heldout_choices=[{"branches": b, "num_speculative_tokens": k} for b, k in chosen])
    return summary


def _difference_ci95_points(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """95% interval (points) of accuracy(a) - accuracy(b) for two independent runs."""
    diff = a["accuracy"] - b["accuracy"]
    se = math.sqrt(a["accuracy"] * (1 - a["accuracy"]) / a["requests"]
                   + b["accuracy"] * (1 - b["accuracy"]) / b["requests"])
    return [round((diff - 1.96 * se) * 100, 2), round((diff + 1.96 * se) * 100, 2)]


def run_planner_bench(url: str, out: str | Path, limit: int = 100, budgets_s: Sequence[float] = (1.5, 3.0, 6.0),
                      branches: Sequence[int] = (1, 4, 8, 16), draft_lengths: Sequence[int] = (0, 4),
                      concurrency: int = 8, early_stop_branches: int = 16, early_stop_budget_s: float = 60.0,
                      early_stop_limit: int | None = None, max_attempts: int = 3, seed: int | None = 0,
                      repeats: int = 1, command: str = "tts-ray bench-planner") -> dict[str, Any]:
    """Run the planner benchmark against the service at ``url``; write and return the figures.

    Each of the ``concurrency`` clients sends its next problem when the last one is answered;
    with ``max_attempts`` > 1 a client answered 429 waits the Retry-After and sends the same
    problem again, up to ``max_attempts`` attempts (a rejection that stands is a wrong
    answer). With 1, a 429 is final and the client moves on at once: under overload the
    rows then measure how many requests each configuration gets admitted in a race of a
    few seconds more than what it answers.

    The early-stopping comparison runs on the first ``early_stop_limit`` problems (default
    ``limit``): one problem is 100/limit points, so a 1-point accuracy figure needs more
    problems than the budget sweep.

    With a ``seed`` (default 0) every row sends each problem the same per-problem seed
    (:meth:`~tts_ray.eval.runner.EvalRequest.problem_seed`): on pools that apply seeds, branch
    i of a problem samples the same tokens in every row that runs it on the same pool, so
    the rows differ by their configurations and deadlines, not by sampling luck (common
    random numbers). None: every row samples afresh.

    With ``repeats`` > 1 the whole budget sweep (every fixed row and auto, at every budget)
    runs that many times, repeat r with base seed ``seed + r * BENCH_REPEAT_SEED_STRIDE``,
    and each budget's figures are over all of them (:func:`summarize_budget`), with the
    held-out gap. The warm-up and the early-stopping comparison run once.

    Each budget's rows (``repeat`` added) are also appended, as they end, to ``out`` with the
    suffix ``.rows.jsonl``, one JSON line a row, so a run stopped early keeps them.

    Raises:
        ValueError: ``repeats`` outside 1 to ``MAX_BENCH_REPEATS``, or a ``seed`` whose last
            repeat's seed would reach ``MAX_EVAL_SEED``.
    """
    if not 1 <= repeats <= MAX_BENCH_REPEATS:
        raise ValueError(f"repeats must be 1 to {MAX_BENCH_REPEATS}, got {repeats}")
    if seed is not None and seed + (repeats - 1) * BENCH_REPEAT_SEED_STRIDE >= MAX_EVAL_SEED:
        raise ValueError(f"seed {seed} leaves no room for {repeats} repeats below {MAX_EVAL_SEED}")
    # Each budget's rows as they end, one JSON line a row beside ``out``: a run stopped (or cut
    # off) before its figures keeps its rows, per-problem plans included, for the analysis.
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = out.with_suffix(".rows.jsonl")
    rows_path.write_text("")
    problems = load_dataset("arith500", limit=limit).problems
    stop_problems = load_dataset("arith500", limit=early_stop_limit or limit).problems
    # Warm-up: compiles the engines' shapes and fills the prefix cache, under a budget loose
    # enough that no request is cut (a cut there would teach the keeper start-up's margins).
    _run(problems[:16], url, concurrency, "warm-up", branches="auto", latency_budget_s=4 * budgets_s[-1],
         max_attempts=max_attempts, seed=seed)
    sweeps: dict[float, list[dict[str, Any]]] = {budget_s: [] for budget_s in budgets_s}
    over_budget_ms: list[float] = []
    for repeat in range(repeats):
        # each repeat samples afresh (its own base seed), so the repeats measure sampling and
        # timing noise together; within a repeat the rows still share their random numbers
        repeat_seed = None if seed is None else seed + repeat * BENCH_REPEAT_SEED_STRIDE
        prefix = f"r{repeat + 1} " if repeats > 1 else ""
        for budget_s in budgets_s:
            fixed = []
            for k in draft_lengths:
                for b in branches:
                    row = _run(problems, url, concurrency, f"{prefix}budget {budget_s:g}s B={b} k={k}", branches=b,
                               num_speculative_tokens=k, latency_budget_s=budget_s, max_attempts=max_attempts,
                               seed=repeat_seed)
                    fixed.append(row)
            auto = _run(problems, url, concurrency, f"{prefix}budget {budget_s:g}s auto", branches="auto",
                        num_speculative_tokens="auto", latency_budget_s=budget_s, max_attempts=max_attempts,
                        seed=repeat_seed)
            for row in [*fixed, auto]:
                over_budget_ms += [(lat - budget_s) * 1000 for lat in row["latencies_s"]]
            with rows_path.open("a") as rows_file:
                rows_file.writelines(json.dumps({"repeat": repeat + 1, **row}) + "\n" for row in [*fixed, auto])
            sweeps[budget_s].append({"fixed": fixed, "auto": auto})
    per_budget = [summarize_budget(budget_s, sweeps[budget_s]) for budget_s in budgets_s]
    for b in per_budget:
        heldout = "" if b["gap_points_heldout"] is None else f", held out {b['gap_points_heldout']:.1f}"
        print(f"budget {b['budget_s']:g}s: auto {b['auto_accuracy']:.3f}, best fixed {b['best_fixed']['accuracy']:.3f} "
              f"(B={b['best_fixed']['branches']} k={b['best_fixed']['num_speculative_tokens']}) over {repeats} "
              f"repeat(s): gap {b['gap_points']:.1f}{heldout} points", flush=True)
    full_results: list = []
    full = _run(stop_problems, url, concurrency, f"B={early_stop_branches} full", branches=early_stop_branches,
                latency_budget_s=early_stop_budget_s, early_stop=False, results_out=full_results,
                max_attempts=max_attempts, seed=seed)
    early = _run(stop_problems, url, concurrency, f"B={early_stop_branches} early stop",
                 branches=early_stop_branches, latency_budget_s=early_stop_budget_s, early_stop=True,
                 max_attempts=max_attempts, seed=seed)
    status = _status(url)
    paired = paired_early_stop(full_results, stop_problems, status.get("early_stop_rule"), early_stop_branches)
    figures = {
        "p99_over_budget_ms": percentile(over_budget_ms, 99),
        "auto_gap_points": max(b["gap_points"] for b in per_budget),
        "auto_gap_ci95_points": max(per_budget, key=lambda b: b["gap_points"])["gap_ci95_points"],
        "auto_gap_ci95_points_paired": max(per_budget, key=lambda b: b["gap_points"])["gap_ci95_points_paired"],
        # with two repeats or more: the gap to the configuration chosen on the other repeats
        # (summarize_budget), the estimate the luck of picking the best row does not inflate
        "auto_gap_points_heldout": (max(b["gap_points_heldout"] for b in per_budget) if repeats > 1 else None),
        "auto_gap_ci95_points_heldout": (max(per_budget, key=lambda b: b["gap_points_heldout"])
                                         ["gap_ci95_points_heldout"] if repeats > 1 else None),
        "repeats": repeats,
        "early_stop_token_saving": 1 - early["tokens_per_problem"] / full["tokens_per_problem"],
        "early_stop_accuracy_drop_points": (full["accuracy"] - early["accuracy"]) * 100,
        # Unseeded (or on pools that drop seeds), the two runs sample independently and the
        # drop carries the sampling noise of both: the normal-approximation 95% interval says
        # how much (an upper bound on it when both rows were seeded alike).
        "early_stop_accuracy_drop_ci95_points": _difference_ci95_points(full, early),
        # The service's rule replayed on the full run's own branches: the same samples with and
        # without stopping, so only the stopping differs (no sampling noise between two runs).
        "early_stop_accuracy_drop_points_paired": paired.get("accuracy_drop_points"),
        "early_stop_token_saving_paired": paired.get("token_saving"),
        "prediction_error_median_abs": status["prediction_error"]["median_abs"],
        "prediction_error_mean_signed": status["prediction_error"]["mean_signed"],
    }
    result = {
        **figures,
        "details": {"problems": len(problems), "dataset": "arith500", "concurrency": concurrency,
                    "max_attempts": max_attempts, "seed": seed,
                    "method": "majority", "budgets": per_budget,
                    "early_stop": {"full": full, "early": early, "branches": early_stop_branches,
                                   "budget_s": early_stop_budget_s, "problems": len(stop_problems),
                                   "rule": status.get("early_stop_rule"), "paired_replay": paired},
                    "keeper_status": status},
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return result
