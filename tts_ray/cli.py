"""The ``tts-ray`` command line: serving, evaluation and benchmarks, testbed data and training."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path


def _cmd_arith500(args: argparse.Namespace) -> int:
    from tts_ray.testbed.arith import arith500, sha256_of, write_jsonl

    records = arith500()
    path = write_jsonl(records, args.out)
    print(f"wrote {len(records)} problems to {path} (sha256 {sha256_of(records)})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from tts_ray.testbed.train import STAGES, TrainConfig, train_all

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    stages = STAGES if args.stage == "all" else (args.stage,)
    summary = train_all(args.out, TrainConfig(**overrides), stages=stages)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2)[:4000])
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tts_ray.testbed.bench import run_testbed_bench

    run_testbed_bench(out=args.out, limit=args.limit, num_samples=args.samples,
                      models_root=args.models, command=args.command_line)
    return 0


def _planner_records(dataset: str, limit: int | None) -> list[dict]:
    """Problems for profiling/calibration: ``arith-valid`` (ARITH's validation split, the
    default: never the benchmark's test set), or any dataset ``tts-ray eval`` reads
    (``arith500``, ``math500``, a JSONL path)."""
    if dataset == "arith-valid":
        from tts_ray.testbed.train import validation_problems

        return validation_problems(limit or 200)
    from tts_ray.eval.datasets import DatasetError, load_dataset

    try:
        return [p.model_dump() for p in load_dataset(dataset, limit=limit).problems]
    except DatasetError as exc:
        raise SystemExit(f"tts-ray: {exc}") from None


def _cmd_profile(args: argparse.Namespace) -> int:
    from tts_ray.config import load_app_config
    from tts_ray.planner.profiler import profile_pools

    config = load_app_config(args.config)
    problems = [r["problem"] for r in _planner_records(args.dataset, 64)]
    profile = profile_pools(config, problems, concurrency=args.concurrency, draft_lengths=args.draft_lengths,
                            num_tokens=args.tokens, command=args.command_line)
    print(f"wrote {profile.save(args.out)}")
    for name, pool in profile.pools.items():
        for curve in pool.curves:
            print(f"{name} k={curve.num_speculative_tokens}: flat (<=10% slower) up to "
                  f"{curve.flat_until(0.10)} sequences; tokens/step {curve.tokens_per_step:.2f}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from tts_ray.config import load_app_config
    from tts_ray.planner.calibrate import calibrate

    config = load_app_config(args.config)
    if args.from_samples is not None:
        import json

        from tts_ray.planner.calibrate import calibration_from_samples

        rows = [json.loads(line) for line in args.from_samples.read_text().splitlines() if line.strip()]
        calibration = calibration_from_samples(rows, dataset=args.dataset,
                                               max_tokens=config.router.default_max_tokens,
                                               command=args.command_line)
        print(f"wrote {calibration.save(args.out)}")
        return 0
    records = _planner_records(args.dataset, args.limit)
    calibration = calibrate(config, records, dataset=args.dataset, samples=args.samples,
                            command=args.command_line, samples_out=args.samples_out)
    print(f"wrote {calibration.save(args.out)}")
    return 0


def _cmd_tune_early_stop(args: argparse.Namespace) -> int:
    import json

    from tts_ray.planner.early_stop import EarlyStopRule, simulate

    problems = [json.loads(line) for line in args.samples.read_text().splitlines() if line.strip()]
    print(f"{len(problems)} problems, B = {args.branches}, {args.orders} sample orders each")
    print(f"{'criterion':>10} {'window':>6} {'confidence':>10} {'acc full':>8} {'acc early':>9} "
          f"{'drop pts':>8} {'branches':>8} {'token saving':>12}")
    rows = []
    for criterion in args.criteria:
        for window in args.windows:
            for confidence in args.confidences:
                row = simulate(problems, EarlyStopRule(window, confidence, criterion), args.branches,
                               orders=args.orders)
                rows.append(row)
                print(f"{criterion:>10} {window:>6} {confidence:>10.2f} {row['accuracy_full']:>8.3f} "
                      f"{row['accuracy_early']:>9.3f} {row['accuracy_drop_points']:>8.2f} "
                      f"{row['branches_used']:>8.2f} {row['token_saving']:>12.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"samples": str(args.samples), "branches": args.branches,
                                        "orders": args.orders, "command": args.command_line,
                                        "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def _cmd_bench_planner(args: argparse.Namespace) -> int:
    from tts_ray.planner.bench import run_planner_bench

    def run(url: str) -> None:
        run_planner_bench(url, args.out, limit=args.limit, budgets_s=args.budgets, branches=args.branches,
                          draft_lengths=args.draft_lengths, concurrency=args.concurrency,
                          early_stop_limit=args.early_stop_limit, max_attempts=args.max_attempts,
                          seed=None if args.no_seed else args.seed, repeats=args.repeats,
                          command=args.command_line)

    if args.url:
        run(args.url)
        return 0
    from ray import serve

    from tts_ray.serve.local import start_app

    url = start_app(args.config, quiet=True)
    try:
        run(url)
    finally:
        serve.shutdown()
    return 0


def _bounded(parse: Callable[[str], int], most: int) -> Callable[[str], int]:
    """``parse`` (an argparse type) that also refuses values above ``most``."""
    def parse_bounded(text: str) -> int:
        value = parse(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"expected at most {most}, got {value}")
        return value

    return parse_bounded


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _cmd_serve(args: argparse.Namespace) -> int:
    from tts_ray.serve.local import serve_forever

    return serve_forever(args.config, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-ray", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("serve", help="deploy the app on a local Ray cluster and serve until ^C")
    p.add_argument("--config", type=Path, default=Path("deployments/local.yaml"),
                   help="Ray Serve config file whose application runs tts_ray.app:build_app")
    p.add_argument("--host", default=None, help="override http_options.host")
    p.add_argument("--port", type=int, default=None, help="override http_options.port")
    p.set_defaults(func=_cmd_serve)

    from tts_ray.constants import MAX_BENCH_REPEATS
    from tts_ray.eval.cli import positive_int, seed_arg
    from tts_ray.planner.profiler import DEFAULT_CONCURRENCY, DEFAULT_DRAFT_LENGTHS

    p = verbs.add_parser("profile", help="measure decode speed per pool against concurrency and draft length")
    p.add_argument("--config", type=Path, default=Path("deployments/local.yaml"))
    p.add_argument("--out", type=Path, required=True, help="profile file to write (JSON)")
    p.add_argument("--concurrency", type=_int_list, default=list(DEFAULT_CONCURRENCY),
                   help="comma-separated concurrent sequences")
    p.add_argument("--draft-lengths", type=_int_list, default=list(DEFAULT_DRAFT_LENGTHS),
                   help="comma-separated draft lengths k to try on pools with a draft model")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per measurement")
    p.add_argument("--dataset", default="arith-valid", help="where the prompts come from")
    p.set_defaults(func=_cmd_profile)

    p = verbs.add_parser("calibrate", help="measure expected accuracy per (method, branches) on a dataset")
    p.add_argument("--config", type=Path, default=Path("deployments/local.yaml"))
    p.add_argument("--out", type=Path, required=True, help="calibration file to write (JSON)")
    p.add_argument("--dataset", default="arith-valid", help="arith-valid, arith500, math500 or a JSONL path")
    p.add_argument("--limit", type=int, default=200, help="problems used")
    p.add_argument("--samples", type=int, default=32, help="samples per problem (largest B calibrated)")
    p.add_argument("--samples-out", type=Path, default=None,
                   help="also write every problem's samples (JSONL) for tune-early-stop")
    p.add_argument("--from-samples", type=Path, default=None,
                   help="rebuild the calibration from a --samples-out file (no engines; max_tokens from "
                        "the config's default_max_tokens, the value they were drawn with)")
    p.set_defaults(func=_cmd_calibrate)

    p = verbs.add_parser("tune-early-stop", help="simulate early-stopping rules on samples from calibrate")
    p.add_argument("--samples", type=Path, required=True, help="JSONL from calibrate --samples-out")
    p.add_argument("--branches", type=positive_int, default=16, help="B the requests ask for")
    p.add_argument("--criteria", type=lambda s: s.split(","), default=["beta", "final_vote"])
    p.add_argument("--windows", type=_int_list, default=[2, 4])
    p.add_argument("--confidences", type=_float_list, default=[0.8, 0.9, 0.95])
    p.add_argument("--orders", type=positive_int, default=8, help="random sample orders per problem")
    p.add_argument("--out", type=Path, default=None, help="also write the table (JSON)")
    p.set_defaults(func=_cmd_tune_early_stop)

    p = verbs.add_parser("bench-planner", help="the planner's figures through the service: planner.json")
    p.add_argument("--url", default=None, help="a running service; default: start deployments/local.yaml")
    p.add_argument("--config", type=Path, default=Path("deployments/local.yaml"))
    p.add_argument("--out", type=Path, default=Path("bench/results/planner.json"))
    p.add_argument("--limit", type=int, default=100, help="ARITH-500 problems")
    p.add_argument("--budgets", type=_float_list, default=[1.5, 3.0, 6.0], help="latency budgets, seconds")
    p.add_argument("--branches", type=_int_list, default=[1, 4, 8, 16], help="fixed B grid")
    p.add_argument("--draft-lengths", type=_int_list, default=[0, 4], help="fixed k grid (pools)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--early-stop-limit", type=int, default=None,
                   help="ARITH-500 problems of the early-stopping comparison (default --limit)")
    p.add_argument("--max-attempts", type=positive_int, default=3,
                   help="attempts per problem: a 429 is retried after its Retry-After, up to this many "
                        "in all, as a well-behaved client does (1: a 429 is final and the client moves "
                        "on to its next problem at once)")
    p.add_argument("--repeats", type=_bounded(positive_int, MAX_BENCH_REPEATS), default=1,
                   help="runs of the whole budget sweep, each with its own seeds: accuracies are means "
                        "over them, and with 2 or more the gap is also measured against the fixed (B, k) "
                        f"chosen on the other repeats (at most {MAX_BENCH_REPEATS})")
    seeding = p.add_mutually_exclusive_group()
    seeding.add_argument("--seed", type=seed_arg, default=0,
                         help="base sampling seed: every row sends a problem the same seed, so rows on "
                              "one pool sample its branches alike and differ only by configuration")
    seeding.add_argument("--no-seed", action="store_true", help="send no seeds: every row samples afresh")
    p.set_defaults(func=_cmd_bench_planner)

    testbed = verbs.add_parser("testbed", help="the ARITH testbed: data, training, benchmark")
    tb = testbed.add_subparsers(dest="testbed_verb", required=True)

    p = tb.add_parser("arith500", help="write the ARITH-500 test split as JSONL")
    p.add_argument("--out", type=Path, default=Path("arith500.jsonl"))
    p.set_defaults(func=_cmd_arith500)

    from tts_ray.testbed.train import STAGES, TrainConfig

    p = tb.add_parser("train", help="train target, draft and PRM from a seed")
    p.add_argument("--out", type=Path, required=True, help="folder to write the models into")
    p.add_argument("--stage", choices=("all", *STAGES), default="all",
                   help="run one stage; later stages load the target from --out")
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default),
                       default=None, help=f"default {f.default}")
    p.set_defaults(func=_cmd_train)

    p = tb.add_parser("bench", help="measure the bundled models through vLLM on ARITH-500")
    p.add_argument("--out", type=Path, default=Path("bench/results/testbed.json"))
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--samples", type=int, default=16, help="branches for the votes")
    p.add_argument("--models", type=Path, default=None, help="models root (default: bundled)")
    p.set_defaults(func=_cmd_bench)

    from tts_ray.eval.cli import add_bench_arguments, add_eval_arguments, bench_from_args, run_from_args

    p = verbs.add_parser("eval", help="evaluate a service on a dataset: accuracy, latency, tokens")
    add_eval_arguments(p).set_defaults(func=run_from_args)
    p = verbs.add_parser("bench", help="tts_ray against its peers on the same problems: bench.json, bench.png")
    add_bench_arguments(p).set_defaults(func=bench_from_args)

    from tts_ray.k8s import add_k8s_parser

    add_k8s_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["tts-ray", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
