"""Command-line arguments of ``tts-ray eval`` and ``python -m tts_ray.eval`` (one definition for both)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def branches_arg(value: str) -> int | str:
    """``--branches``: an int >= 1 or ``auto`` (argparse type).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {value!r}") from None


def k_arg(value: str) -> int | str:
    """``--num-speculative-tokens``: an int >= 0 or ``auto`` (argparse type)."""
    if value == "auto":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'auto', got {value!r}")
    return int(value)


def positive_int(value: str) -> int:
    """An int >= 1 (argparse type)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def seed_arg(value: str) -> int:
    """A base seed: an int in [0, 2**62) (argparse type)."""
    from tts_ray.constants import MAX_EVAL_SEED

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if not 0 <= number < MAX_EVAL_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**62), got {value!r}")
    return number


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to ``parser``."""
    parser.add_argument("--dataset", default="arith500",
                        help="arith500, math500 (hub if reachable, else the local JSONL) or PATH.jsonl")
    parser.add_argument("--dataset-source", choices=("auto", "hub", "local"), default="auto",
                        help="where MATH-500 comes from (default: hub if reachable, else local)")
    parser.add_argument("--limit", type=positive_int, default=None, help="first N problems only")
    parser.add_argument("--url", default=None,
                        help="base URL of a running service (e.g. http://127.0.0.1:8000); "
                             "without it the app is started in-process from --config")
    parser.add_argument("--config", type=Path, default=Path("deployments/local.yaml"),
                        help="Serve config for the in-process service (used without --url)")
    parser.add_argument("--method", default=None,
                        help="tts.method (single, majority, weighted_majority, best_of_n, beam_search, "
                             "dvts, or auto where the router has the planner); default: the router's")
    parser.add_argument("--branches", type=branches_arg, default=None,
                        help="tts.branches: an integer or 'auto'; default: the router's")
    parser.add_argument("--num-speculative-tokens", "-k", type=k_arg, default=None,
                        help="tts.num_speculative_tokens: pin the draft length k (0: none) or 'auto'")
    parser.add_argument("--budget", type=float, default=None, dest="latency_budget_s",
                        help="tts.latency_budget_s in seconds")
    parser.add_argument("--seed", type=seed_arg, default=None,
                        help="base sampling seed: each problem gets its own tts.seed from it and its id, "
                             "the same in every run (applied on GPU pools and CPU pools with chunked "
                             "prefill off)")
    parser.add_argument("--model", default=None, help="model id; default: the service's first")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="tokens per branch")
    parser.add_argument("--temperature", type=float, default=None, help="branch sampling temperature")
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat",
                        help="chat: the problem as the user message; completions: as the raw prompt")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=900.0, dest="request_timeout_s",
                        help="client-side timeout of one request, seconds")
    parser.add_argument("--max-attempts", type=positive_int, default=1,
                        help="attempts per problem: after a 429 or 503, wait its Retry-After and send "
                             "again, up to this many in all (1: no retry)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for results.jsonl, summary.json and summary.csv")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--api-key", default=None,
                        help="Bearer key for a service with API keys on (default: $TTS_RAY_API_KEY, "
                             "else the first key in the file $TTS_RAY_API_KEYS_FILE)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run an evaluation from parsed arguments; print the summary; 0 on success, 2 on a dataset
    or connection error (with the message on stderr)."""
    from tts_ray.eval.datasets import DatasetError
    from tts_ray.eval.runner import EvalConfig, EvalRequest, ServiceUnavailableError, run_eval

    request = EvalRequest(method=args.method, branches=args.branches,
                          num_speculative_tokens=args.num_speculative_tokens,
                          latency_budget_s=args.latency_budget_s,
                          seed=args.seed, model=args.model, max_tokens=args.max_tokens,
                          temperature=args.temperature, endpoint=args.endpoint,
                          request_timeout_s=args.request_timeout_s, max_attempts=args.max_attempts,
                          **({"api_key": args.api_key} if args.api_key else {}))
    config = EvalConfig(dataset=args.dataset, dataset_source=args.dataset_source, limit=args.limit,
                        url=args.url, config=args.config, concurrency=args.concurrency, request=request,
                        out=args.out, progress=not args.no_progress)
    try:
        summary = run_eval(config)
    except (DatasetError, ServiceUnavailableError) as exc:
        print(f"tts-ray eval: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.model_dump(), indent=2))
    print(f"wrote {args.out}/results.jsonl, summary.json, summary.csv", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tts_ray.eval``: the same options as ``tts-ray eval``."""
    parser = add_eval_arguments(argparse.ArgumentParser(
        prog="python -m tts_ray.eval",
        description="Evaluate a tts_ray service on a dataset: accuracy, latency, tokens."))
    return run_from_args(parser.parse_args(argv))


def int_list(value: str) -> list[int]:
    """A comma-separated list of ints >= 1 (argparse type), e.g. ``1,4,16``."""
    return [positive_int(v.strip()) for v in value.split(",") if v.strip()]


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``tts-ray bench`` options to ``parser``."""
    from tts_ray.eval.bench import BenchConfig

    defaults = BenchConfig()
    parser.add_argument("--dataset", default=defaults.dataset, help="arith500 (default), math500 or PATH.jsonl")
    parser.add_argument("--limit", type=positive_int, default=defaults.limit, help="first N problems")
    parser.add_argument("--branches", type=int_list, default=defaults.branches,
                        help="comma-separated B values, also best-of-N's N (default 1,4,16)")
    parser.add_argument("--methods", type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                        default=defaults.service_methods, dest="service_methods",
                        help="service methods at each B > 1 (default majority,weighted_majority,best_of_n)")
    parser.add_argument("--config", type=Path, default=defaults.config, help="Serve config of the service")
    parser.add_argument("--url", default=None, help="a running service instead of one started in-process")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-tokens", type=positive_int, default=defaults.max_tokens)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed requests per system")
    parser.add_argument("--auto-budget", type=float, default=None, dest="auto_budget_s",
                        help="tts.latency_budget_s sent with branches=auto")
    parser.add_argument("--skip-peers", action="store_true", help="measure the service only")
    parser.add_argument("--out-dir", type=Path, default=defaults.out_dir, help="for bench.json and bench.png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: recompute the figures and the plot of a saved bench.json "
                             "(written back to --out-dir)")
    return parser


def bench_from_args(args: argparse.Namespace) -> int:
    """Run ``tts-ray bench`` from parsed arguments (engines start here: call under a
    ``__main__`` guard)."""
    from tts_ray.eval.bench import BenchConfig, refigure, run_bench

    if args.from_json is not None:
        document = refigure(args.from_json, args.out_dir)
        print(json.dumps({k: document[k] for k in ("router_overhead_ratio", "branch16_over_branch1_latency",
                                                   "speedup_vs_sequential_best_of_n", "dominates_peers")},
                         indent=2))
        return 0
    config = BenchConfig(dataset=args.dataset, limit=args.limit, branches=args.branches,
                         service_methods=args.service_methods, config=args.config, url=args.url,
                         temperature=args.temperature, max_tokens=args.max_tokens, warmup=args.warmup,
                         auto_budget_s=args.auto_budget_s, skip_peers=args.skip_peers, out_dir=args.out_dir,
                         progress=not args.no_progress)
    run_bench(config, command=getattr(args, "command_line", "tts-ray bench"))
    return 0
