"""GPU measurements (issue #8): model shapes with random weights, and decode-step time at B
branches through the service against plain in-process vLLM on the same GPU.

``python -m tts_ray.eval.gpu models --out DIR`` writes Qwen2.5-3B- and Qwen2.5-0.5B-shaped model
folders (``config.json`` from the public configs, a generation config, a tokenizer) with no
weights: vLLM loads them with ``load_format: dummy`` (random weights), which is enough for
speed, since a decode step costs the same whatever the weights hold. The tokenizer is the
testbed's character tokenizer with its vocabulary padded by filler tokens to the models'
151936 ids, so that whatever a random model samples can be detokenized. Acceptance of a random
draft by a random target says nothing about real models: only the step times are meaningful.

``python -m tts_ray.eval.gpu steps --config FILE --out FILE`` measures, for the config's first
generator pool, the time of one decode step while B sequences decode together, twice:

1. ``plain``: in-process ``vllm.LLM`` with the pool's engine arguments, B copies of the prompt
   in one ``generate`` call;
2. ``service``: the app started from the config (Ray Serve + the router + ray.serve.llm), one
   HTTP request with ``tts: {method: majority, branches: B}`` (``single`` at B = 1).

Step time = (t(long) - t(short)) / (long - short) over the medians of ``repeats`` runs at two
lengths, so prefill, the HTTP hop and the merge cancel out and what remains is the per-token
cost (serving overhead per token included). Also recorded: the whole request's time at the long
length for B = 1 in both (its ratio is the router's overhead for one branch). Sampling follows
the service's defaults (temperature 0.7, EOS honoured); the tokens each run produced are kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Public Hugging Face configs of Qwen/Qwen2.5-3B-Instruct and Qwen/Qwen2.5-0.5B-Instruct (the
# shape fields; bos/eos/pad ids are replaced by the padded testbed tokenizer's).
QWEN2_BASE: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 151936,
}
QWEN_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-3b-dummy": {"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16,
                         "num_key_value_heads": 2, "intermediate_size": 11008, "max_window_layers": 70},
    "qwen2.5-0.5b-dummy": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                           "num_key_value_heads": 2, "intermediate_size": 4864, "max_window_layers": 21},
}
FILLER = "<|x{}|>"  # filler token strings for ids past the testbed tokenizer's vocabulary


def padded_tokenizer_json(source: Path, vocab_size: int) -> dict[str, Any]:
    """The testbed's ``tokenizer.json`` with its WordLevel vocabulary padded to ``vocab_size``
    ids by filler tokens (never produced by encoding: every character is its own token)."""
    data = json.loads(source.read_text())
    vocab = data["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    for i in range(vocab_size):
        if i not in used:
            vocab[FILLER.format(i)] = i
    return data


def write_dummy_model(out_dir: str | Path, name: str, tokenizer_dir: str | Path | None = None) -> Path:
    """Write model folder ``out_dir/name`` for one of :data:`QWEN_SHAPES` (no weights)."""
    from tts_ray.testbed.models import model_dir

    source = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir("target")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    special = json.loads((source / "special_tokens_map.json").read_text())
    tokenizer = padded_tokenizer_json(source / "tokenizer.json", QWEN2_BASE["vocab_size"])
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    config = {**QWEN2_BASE, **QWEN_SHAPES[name], "bos_token_id": ids[special["bos_token"]],
              "eos_token_id": ids[special["eos_token"]], "pad_token_id": ids[special["pad_token"]]}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = config["max_position_embeddings"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "README.md").write_text(
        f"{name}: the shape of the public config, random weights (load with vLLM load_format=dummy), "
        "the testbed's character tokenizer padded with filler tokens to 151936 ids.\n")
    return folder


# --- step time: plain vLLM against the service -------------------------------------------------

PROMPT = "Ava has 42 coins. Then Ava loses 7 coins. How many coins does Ava have now?"


def step_time(t_short: float, t_long: float, short: int, long: int) -> float:
    """Seconds per decode step from the medians at two generation lengths."""
    if long <= short:
        raise ValueError("long must exceed short")
    return (t_long - t_short) / (long - short)


def ratios(steps: dict[int, float]) -> dict[str, float]:
    """Step time at each B over the step time at the smallest B (``"16/1"`` and so on)."""
    base_b = min(steps)
    return {f"{b}/{base_b}": steps[b] / steps[base_b] for b in sorted(steps) if b != base_b}


def _pool_and_prompt(config_path: Path):
    from tts_ray.config import load_app_config, resolve_model_source

    pool = load_app_config(config_path).generators[0]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(pool.model_source))
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    return pool, tokenizer.encode(text, add_special_tokens=False)


def measure_plain(config_path: Path, branches: list[int], lengths: tuple[int, int], repeats: int,
                  temperature: float, log=print) -> dict[str, Any]:
    """In-process vLLM with the first pool's engine (as ``tts-ray profile`` builds it)."""
    from vllm import SamplingParams

    from tts_ray.config import resolve_model_source
    from tts_ray.engines import vllm_offline
    from tts_ray.planner.profiler import _engine

    pool, prompt_ids = _pool_and_prompt(config_path)
    target = resolve_model_source(pool.model_source)
    draft = resolve_model_source(pool.speculative.model_source) if pool.speculative else None
    k = pool.speculative.num_speculative_tokens if pool.speculative else 0
    llm = _engine(pool, target, draft, k)
    prompt = {"prompt_token_ids": prompt_ids}

    def run(b: int, n_tokens: int) -> tuple[float, int]:
        params = SamplingParams(n=1, temperature=temperature, max_tokens=n_tokens)
        started = time.perf_counter()
        outs = llm.generate([prompt] * b, params, use_tqdm=False)
        return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outs)

    for _ in range(2):  # warm-up
        run(max(branches), lengths[1])
    result = _measure(run, branches, lengths, repeats, "plain", log)
    vllm_offline.shutdown(llm)
    return result


def _measure(run, branches: list[int], lengths: tuple[int, int], repeats: int, label: str, log) -> dict[str, Any]:
    short, long = lengths
    rows: dict[str, Any] = {}
    steps: dict[int, float] = {}
    for b in branches:
        samples = {n: [run(b, n) for _ in range(repeats)] for n in (short, long)}
        med = {n: statistics.median(t for t, _ in samples[n]) for n in samples}
        steps[b] = step_time(med[short], med[long], short, long)
        rows[str(b)] = {"step_s": steps[b], "median_s": {str(n): med[n] for n in med},
                        "runs_s": {str(n): [t for t, _ in samples[n]] for n in samples},
                        "tokens": {str(n): [c for _, c in samples[n]] for n in samples}}
        log(f"  {label} B={b}: {steps[b] * 1000:.2f} ms/step; {long} tokens in {med[long]:.3f} s")
    return {"by_branches": rows, "step_s": {str(b): s for b, s in steps.items()},
            "step_ratio": ratios(steps), "request_s_b1_long": rows[str(min(branches))]["median_s"][str(long)]}


def measure_service(config_path: Path, branches: list[int], lengths: tuple[int, int], repeats: int,
                    temperature: float, url: str | None = None, log=print) -> dict[str, Any]:
    """The same through the service (started here from ``config_path`` unless ``url``)."""
    import httpx

    started_here = url is None
    if started_here:
        from tts_ray.serve.local import start_app

        url = start_app(config_path, quiet=True)
    pool, _ = _pool_and_prompt(config_path)
    client = httpx.Client(timeout=600)

    def run(b: int, n_tokens: int) -> tuple[float, int]:
        body = {"model": pool.model_id, "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": n_tokens, "temperature": temperature,
                "tts": {"method": "single" if b == 1 else "majority", "branches": b}}
        t0 = time.perf_counter()
        response = client.post(f"{url}/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - t0
        response.raise_for_status()
        return elapsed, response.json()["usage"]["completion_tokens"]

    try:
        for _ in range(2):
            run(max(branches), lengths[1])
        return _measure(run, branches, lengths, repeats, "service", log)
    finally:
        client.close()
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()


def run_steps(config_path: Path, out: Path, branches: list[int], lengths: tuple[int, int], repeats: int,
              temperature: float = 0.7, skip_plain: bool = False, log=print) -> dict[str, Any]:
    """Plain vLLM first (then shut down), the service after it; write and return the document."""
    import vllm

    from tts_ray.planner.profiler import device_name

    document: dict[str, Any] = {
        "device": device_name(), "vllm": vllm.__version__, "config": str(config_path),
        "branches": branches, "lengths": list(lengths), "repeats": repeats, "temperature": temperature,
        "prompt": PROMPT, "method": "step time = (t(long) - t(short)) / (long - short), medians of repeats",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if not skip_plain:
        log("plain vLLM ...")
        document["plain"] = measure_plain(config_path, branches, lengths, repeats, temperature, log)
        _write(out, document)
    log("service ...")
    document["service"] = measure_service(config_path, branches, lengths, repeats, temperature, log=log)
    document.update(figures(document))
    _write(out, document)
    return document


def figures(document: dict[str, Any]) -> dict[str, Any]:
    """Headline ratios: service step time at each B over B = 1, the same for plain vLLM, and the
    service's time for a whole one-branch request over plain vLLM's."""
    out: dict[str, Any] = {}
    service, plain = document.get("service"), document.get("plain")
    if service:
        out["service_step_ratio"] = service["step_ratio"]
    if plain:
        out["plain_step_ratio"] = plain["step_ratio"]
    if service and plain:
        out["router_overhead_b1"] = service["request_s_b1_long"] / plain["request_s_b1_long"]
        out["router_overhead_b1_per_step"] = {
            b: service["step_s"][b] / plain["step_s"][b] for b in service["step_s"] if b in plain["step_s"]}
    return out


# --- the planner's choices on each measured profile ---------------------------------------------

DEFAULT_BUDGETS = (0.5, 1.0, 2.0, 4.0, 8.0)


def default_profiles() -> list[str]:
    """The CPU testbed profile and every committed GPU profile of the testbed."""
    from tts_ray.constants import REPO_DIR

    gpu = sorted((REPO_DIR / "bench" / "results" / "gpu").glob("profile-testbed-*.json"))
    return ["testbed:profile-cpu", *(str(path) for path in gpu)]


def speculation_ratios(profile) -> dict[str, dict[str, Any]]:
    """Per pool with curves for several k: per-token time at each k over k = 0 at every profiled
    concurrency (below 1: the draft pays there), and where it pays."""
    out: dict[str, dict[str, Any]] = {}
    for name, pool in profile.pools.items():
        ks = sorted(c.num_speculative_tokens for c in pool.curves)
        if 0 not in ks or len(ks) < 2:
            continue
        base = pool.curve(0)
        for k in (k for k in ks if k > 0):
            curve = pool.curve(k)
            ratio = {str(c): curve.seconds_per_token_at(c) / base.seconds_per_token_at(c) for c in base.concurrency}
            out.setdefault(name, {})[str(k)] = {
                "ratio_by_concurrency": ratio,
                "pays_at": [int(c) for c, r in ratio.items() if r < 1.0],
                "acceptance_rate": curve.acceptance_rate, "tokens_per_step": curve.tokens_per_step}
    return out


def curve_summary(profile, slowdown: float = 0.10) -> list[dict[str, Any]]:
    """Every curve of every pool: ``flat_until(slowdown)`` and its step times."""
    return [{"pool": name, "k": curve.num_speculative_tokens, "flat_until": curve.flat_until(slowdown),
             "concurrency": curve.concurrency, "step_ms": [round(s * 1000, 3) for s in curve.step_seconds()],
             "ms_per_token": [round(s * 1000, 3) for s in curve.seconds_per_token]}
            for name, pool in profile.pools.items() for curve in pool.curves]


def _plan_row(planner, request, loads) -> dict[str, Any]:
    from tts_ray.planner.planner import Infeasible

    try:
        plan = planner.plan(request, loads)
    except Infeasible as exc:
        return {"infeasible": True, "predicted_s": round(exc.predicted_s, 4)}
    return {"pool": plan.pool, "k": plan.num_speculative_tokens, "method": plan.method, "branches": plan.num_branches,
            "predicted_s": round(plan.predicted_s, 4), "expected_accuracy": round(plan.expected_accuracy, 4)
            if plan.expected_accuracy is not None else None,
            "branch_finish_probability": plan.branch_finish_probability}


def plan_table(profile_source: str, calibration_source: str = "testbed:calibration-arith",
               budgets: tuple[float, ...] = DEFAULT_BUDGETS, methods: tuple[str, ...] = ("majority",),
               max_tokens: int = 160, max_branches: int = 64, merge_margin_s: float = 0.05) -> dict[str, Any]:
    """The planner's choice on one speed profile for each (budget, method) with B left to it
    ("auto" method: the method too), on idle pools of one replica each (one request alone: its
    fair share is every slot, so ``max_branches`` bounds B): the free choice of pool (draft
    length k) and, beside it, the best plan with k pinned to each pool's draft length."""
    from tts_ray.config import resolve_data_source
    from tts_ray.planner.calibration import Calibration
    from tts_ray.planner.latency import LatencyModel, PoolLoad
    from tts_ray.planner.planner import Planner, PlanRequest
    from tts_ray.planner.profile import ClusterProfile

    profile = ClusterProfile.load(resolve_data_source(profile_source))
    calibration = Calibration.load(resolve_data_source(calibration_source))
    planner = Planner(LatencyModel(profile, calibration, merge_margin_s=merge_margin_s))
    loads = {name: PoolLoad(model_id=pool.model_id, num_speculative_tokens=pool.num_speculative_tokens,
                            replicas=1, slots_per_replica=max_branches)
             for name, pool in profile.pools.items()}
    ks = sorted({load.num_speculative_tokens for load in loads.values()})
    rows = []
    for method in methods:
        for budget in budgets:
            def request(k: int | None, method=method, budget=budget) -> PlanRequest:
                return PlanRequest(budget_s=budget, max_tokens=max_tokens, method=None if method == "auto" else method,
                                   num_speculative_tokens=k, max_branches=max_branches)
            chosen = _plan_row(planner, request(None), loads)
            rows.append({"method": method, "budget_s": budget, "chosen": chosen,
                         "by_k": {str(k): _plan_row(planner, request(k), loads) for k in ks},
                         "speculates": None if chosen.get("infeasible") else chosen["k"] > 0})
    from tts_ray.constants import REPO_DIR

    source = Path(profile_source)
    if source.is_absolute() and source.is_relative_to(REPO_DIR):
        profile_source = str(source.relative_to(REPO_DIR))
    return {"source": profile_source, "device": profile.device, "curves": curve_summary(profile),
            "speculation": speculation_ratios(profile), "plans": rows}


def plans_document(profiles: list[str] | None = None, calibration_source: str = "testbed:calibration-arith",
                   budgets: tuple[float, ...] = DEFAULT_BUDGETS, methods: tuple[str, ...] = ("majority",),
                   max_tokens: int = 160, max_branches: int = 64) -> dict[str, Any]:
    """:func:`plan_table` for every profile (default: :func:`default_profiles`)."""
    profiles = profiles or default_profiles()
    return {"calibration": calibration_source, "budgets_s": list(budgets), "methods": list(methods),
            "max_tokens": max_tokens, "max_branches": max_branches,
            "load": "idle pools, one replica each, one request (fair share = every slot)",
            "profiles": [plan_table(p, calibration_source, budgets, methods, max_tokens, max_branches)
                         for p in profiles]}


def format_plans(document: dict[str, Any]) -> str:
    """The plans document as text tables: flat_until and speculation per profile, then one row
    per (method, budget): the free choice and the best plan at each pinned k."""
    lines = []
    for table in document["profiles"]:
        lines.append(f"== {table['device']}  ({table['source']})")
        for c in table["curves"]:
            lines.append(f"  {c['pool']:>6} k={c['k']}: flat_until(10%) = {c['flat_until']:>3}; "
                         f"step ms {c['step_ms'][:6]}{' ...' if len(c['step_ms']) > 6 else ''}")
        for pool, by_k in table["speculation"].items():
            for k, s in by_k.items():
                ratio = " ".join(f"{c}:{r:.2f}" for c, r in s["ratio_by_concurrency"].items())
                lines.append(f"  {pool} k={k} over k=0, per token: {ratio}; pays at {s['pays_at'] or 'none'}")
        ks = sorted(table["plans"][0]["by_k"], key=int) if table["plans"] else []

        def cell(r: dict[str, Any], pool: bool, method: bool) -> str:
            if r.get("infeasible"):
                return f"infeasible ({r['predicted_s']:.2f}s)"
            acc = "-" if r["expected_accuracy"] is None else f"{r['expected_accuracy']:.3f}"
            where = f"{r['pool']} k={r['k']} " if pool else ""
            how = f"{r['method']} " if method else ""
            return f"{where}{how}B={r['branches']} {r['predicted_s']:.3f}s {acc}"
        grid = [["method", "budget", "chosen: pool k B pred acc", *(f"k={k} pinned: B pred acc" for k in ks)]]
        for row in table["plans"]:
            auto = row["method"] == "auto"
            grid.append([row["method"], f"{row['budget_s']:g}s", cell(row["chosen"], True, auto),
                         *(cell(row["by_k"][k], False, auto) for k in ks)])
        widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
        lines += ["  " + "  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  .rstrip() for r in grid]
    return "\n".join(lines)


def _write(out: Path, document: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")


def gpu_slug(name: str) -> str:
    """A file-name part from a device name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def with_overrides(config_path: Path, out: Path, accelerator_type: str | None = None,
                   profile_source: str | None = None, num_gpus: float | None = None) -> Path:
    """A copy of a Serve config with every ``accelerator_type`` set to the GPU found (the files
    say H100; an H200 gives another Ray accelerator resource), and/or every GPU engine's
    ``num_gpus`` share set to ``num_gpus`` (1: one whole GPU per engine, for vLLM 0.26, whose Ray
    executor ignores a fractional share), and/or the router's ``profile_source`` replaced."""
    import yaml

    data = yaml.safe_load(config_path.read_text())
    args = data["applications"][0]["args"]
    engines = [*args["generators"], *([args["reward"]] if args.get("reward") else [])]
    for engine in engines:
        if not engine.get("accelerator_type"):
            continue  # a CPU engine: no GPU type, no GPU share
        if accelerator_type:
            engine["accelerator_type"] = accelerator_type
        if num_gpus is not None:
            engine["num_gpus"] = num_gpus
    if profile_source:
        args.setdefault("router", {})["profile_source"] = profile_source
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_ray.eval.gpu", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("models", help="write the dummy Qwen2.5-shaped model folders")
    p.add_argument("--out", type=Path, required=True)
    p = verbs.add_parser("steps", help="decode-step time at B branches: plain vLLM and the service")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--branches", default="1,4,16,64")
    p.add_argument("--lengths", default="64,320", help="short,long generation lengths")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-plain", action="store_true")
    p = verbs.add_parser("override", help="copy a Serve config with the GPU's accelerator type / a profile")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--accelerator-type", default=None)
    p.add_argument("--profile-source", default=None)
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPU share of every GPU engine (1: a whole GPU each)")
    p = verbs.add_parser("slug", help="print the file-name form of this machine's GPU name")
    p = verbs.add_parser("plans", help="the planner's choices on each speed profile (no device needed)")
    p.add_argument("--profiles", default=None,
                   help="comma-separated profile sources (default: testbed:profile-cpu and "
                        "bench/results/gpu/profile-testbed-*.json)")
    p.add_argument("--calibration", default="testbed:calibration-arith")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS), help="seconds, comma-separated")
    p.add_argument("--methods", default="majority", help="comma-separated; 'auto' leaves the method to the planner")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--max-branches", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    if args.verb == "models":
        for name in QWEN_SHAPES:
            print(write_dummy_model(args.out, name))
    elif args.verb == "steps":
        branches = [int(b) for b in args.branches.split(",")]
        short, long = (int(n) for n in args.lengths.split(","))
        document = run_steps(args.config, args.out, branches, (short, long), args.repeats,
                             skip_plain=args.skip_plain, log=lambda m: print(m, flush=True))
        print(json.dumps({k: document.get(k) for k in ("device", "service_step_ratio", "plain_step_ratio",
                                                       "router_overhead_b1")}, indent=2))
    elif args.verb == "override":
        print(with_overrides(args.config, args.out, args.accelerator_type, args.profile_source, args.num_gpus))
    elif args.verb == "plans":
        document = plans_document(args.profiles.split(",") if args.profiles else None, args.calibration,
                                  tuple(float(b) for b in args.budgets.split(",")),
                                  tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                                  args.max_tokens, args.max_branches)
        print(format_plans(document))
        if args.out is not None:
            _write(args.out, document)
            print(f"wrote {args.out}")
    elif args.verb == "slug":
        from tts_ray.planner.profiler import device_name

        print(gpu_slug(device_name()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
