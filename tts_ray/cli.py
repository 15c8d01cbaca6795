"""The ``tts-ray`` command line: serving, evaluation and benchmarks, testbed data and training."""

from __future__ import annotations

import argparse
import json
import sys
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["tts-ray", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
