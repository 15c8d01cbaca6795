"""Training of the testbed models: target (SFT), draft (distilled from the target), PRM.

``train_all`` runs the whole recipe from a seed on whatever device torch offers (a GPU
makes it minutes; a CPU works, slowly):

1. **target**: supervised fine-tuning from scratch on generated ARITH problems. Checkpoints
   are evaluated on a validation split (never on ARITH-500) by sampling at T=0.7; the one
   kept is where one sample is right 30-70% of the time and a 16-way majority vote gains
   most, i.e. where test-time scaling has room to help.
2. **draft**: a model about 9x smaller trained to match the target's next-token
   distribution (KL distillation), which is what speculative decoding's acceptance rewards.
3. **PRM**: starts from the target's weights and learns to predict, at the step tag after
   each step of the *target's own sampled solutions*, whether the step is still correct,
   with labels computed exactly by :mod:`tts_ray.testbed.steps`.

torch and transformers are imported lazily: the rest of the package works without them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_ray.constants import ARITH_VALID_SEED, BAD_TOKEN, EOS_TOKEN, GOOD_TOKEN, PAD_TOKEN, STEP_TAG_TOKEN
from tts_ray.methods.voting import majority_vote
from tts_ray.testbed.arith import ARITH_LEVELS, generate_problem, iter_train_problems, noisy_solution
from tts_ray.testbed.models import SHAPES, ModelShape, llama_config, model_dir, write_model_files
from tts_ray.testbed.prm_format import prm_text
from tts_ray.testbed.steps import label_steps, split_steps
from tts_ray.testbed.tokenizer import build_tokenizer, prompt_text, token_id

IGNORE = -100


@dataclass
class TrainConfig:
    """Hyper-parameters of the recipe; the defaults produced the committed models."""

    seed: int = 0
    batch_size: int = 128
    target_steps: int = 3600
    target_lr: float = 1e-3
    eval_every: int = 600
    draft_steps: int = 4000
    draft_lr: float = 2e-3
    prm_problems: int = 12000
    prm_samples_per_problem: int = 4
    prm_steps: int = 3000
    prm_lr: float = 3e-4
    valid_problems: int = 250
    valid_samples: int = 16
    temperature: float = 0.7
    max_new_tokens: int = 128
    min_single_accuracy: float = 0.35
    max_single_accuracy: float = 0.65
    # Probability that the target's training solution slips at a step (the error then
    # propagates). It makes the policy's mistakes random rather than systematic, like a
    # sampling LLM's, which is what voting and PRMs exploit; see docs/testbed.md.
    slip_prob: float = 0.6
    stage_time_budget_s: float = 420.0  # a stage's optimisation stops early past this


def _log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def new_model(shape: ModelShape):
    """A randomly initialised transformers LlamaForCausalLM of ``shape``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in llama_config(shape).items()
                            if k not in ("architectures", "model_type", "torch_dtype")})
    return LlamaForCausalLM(config)


class Encoder:
    """Turns problems and solutions into token ids and loss targets."""

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.pad_id = token_id(PAD_TOKEN)
        self.eos_id = token_id(EOS_TOKEN)
        self.good_id = token_id(GOOD_TOKEN)
        self.bad_id = token_id(BAD_TOKEN)
        self.tag_id = token_id(STEP_TAG_TOKEN)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the BOS token in front."""
        return self.tokenizer.encode(text).ids

    def sft_example(self, record: dict) -> tuple[list[int], list[int]]:
        """(ids, labels): labels copy the ids over the solution and EOS, IGNORE elsewhere."""
        prompt_ids = self.encode(prompt_text(record["problem"]))
        solution_ids = self.tokenizer.encode(record["solution"], add_special_tokens=False).ids
        ids = prompt_ids + solution_ids + [self.eos_id]
        return ids, [IGNORE] * len(prompt_ids) + solution_ids + [self.eos_id]

    def prm_example(self, problem: str, steps: list[str], labels: list[bool]) -> tuple[list[int], list[int]]:
        """(ids, labels): the label after each step tag is GOOD or BAD, IGNORE elsewhere.

        transformers shifts labels by one, so the target sits on the token after the tag.
        """
        ids = self.encode(prm_text(problem, steps))
        targets = [IGNORE] * len(ids)
        tag_positions = [i for i, t in enumerate(ids) if t == self.tag_id]
        if len(tag_positions) != len(labels):
            raise ValueError(f"{len(tag_positions)} step tags for {len(labels)} labels")
        for position, good in zip(tag_positions, labels):
            targets[position + 1] = self.good_id if good else self.bad_id
        return ids, targets

    def batch(self, examples: list[tuple[list[int], list[int]]], device):
        """Right-padded tensors (input_ids, attention_mask, labels)."""
        import torch

        width = max(len(ids) for ids, _ in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(examples):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            mask[row, : len(ids)] = 1
        return input_ids.to(device), mask.to(device), labels.to(device)


def _lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimize(model, batches: Iterator, steps: int, lr: float, loss_fn: Callable,
              on_step: Callable[[int], None] | None = None, time_budget_s: float = math.inf) -> int:
    """AdamW with warm-up and cosine decay; bf16 autocast on CUDA.

    Stops early once ``time_budget_s`` has passed; returns the number of steps taken.
    """
    import torch

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == steps - 1:
            _log(f"step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if on_step is not None:
            on_step(step + 1)
        if time.time() - started > time_budget_s:
            _log(f"time budget of {time_budget_s:.0f}s reached after {step + 1} steps")
            break
    model.eval()
    return step + 1


def _sft_batches(encoder: Encoder, problems: Iterator[dict], batch_size: int, device,
                 slip_prob: float = 0.0, seed: int = 0) -> Iterator:
    rng = random.Random(seed)

    def example(record: dict):
        if slip_prob > 0:
            record = {**record, "solution": noisy_solution(record["solution"], rng, slip_prob)}
        return encoder.sft_example(record)

    while True:
        yield encoder.batch([example(next(problems)) for _ in range(batch_size)], device)


def sample_solutions(model, encoder: Encoder, problems: list[str], num_samples: int,
                     temperature: float, max_new_tokens: int, batch_size: int = 1024) -> list[list[str]]:
    """``num_samples`` sampled solutions per problem (text up to EOS), with transformers."""
    import torch

    device = next(model.parameters()).device
    flat = [p for p in problems for _ in range(num_samples)]
    texts: list[str] = []
    for start in range(0, len(flat), batch_size):
        chunk = [encoder.encode(prompt_text(p)) for p in flat[start:start + batch_size]]
        width = max(map(len, chunk))
        input_ids = torch.full((len(chunk), width), encoder.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(chunk):  # left padding for generation
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=device.type == "cuda"):
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=encoder.eos_id,
                                 pad_token_id=encoder.pad_id)
        for row in out[:, width:].tolist():
            if encoder.eos_id in row:
                row = row[: row.index(encoder.eos_id)]
            texts.append(encoder.tokenizer.decode([t for t in row if t != encoder.pad_id]))
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(problems))]


def validation_problems(count: int) -> list[dict]:
    """``count`` problems from the validation seed, levels cycling 1..5 (disjoint from tests)."""
    rng = random.Random(ARITH_VALID_SEED)
    return [generate_problem(rng, ARITH_LEVELS[i % len(ARITH_LEVELS)], f"arith-valid/{i}")
            for i in range(count)]


def evaluate_policy(model, encoder: Encoder, records: list[dict], cfg: TrainConfig) -> dict:
    """Mean single-sample accuracy and majority-vote accuracy over ``cfg.valid_samples``."""
    from tts_ray.grading import extract_answer

    samples = sample_solutions(model, encoder, [r["problem"] for r in records], cfg.valid_samples,
                               cfg.temperature, cfg.max_new_tokens)
    single = majority = 0.0
    for record, solutions in zip(records, samples):
        answers = [extract_answer(s) for s in solutions]
        single += sum(a == record["answer"] for a in answers) / len(answers)
        majority += majority_vote(answers).answer == record["answer"]
    n = len(records)
    return {"single_accuracy": single / n, f"majority_at_{cfg.valid_samples}_accuracy": majority / n}


def train_target(cfg: TrainConfig, encoder: Encoder, device) -> tuple[object, dict]:
    """SFT the target and keep the checkpoint with the most room for test-time scaling."""
    import torch

    torch.manual_seed(cfg.seed)
    model = new_model(SHAPES["target"]).to(device)
    valid = validation_problems(cfg.valid_problems)
    history: list[dict] = []
    kept: dict = {}

    def on_step(step: int) -> None:
        if step % cfg.eval_every and step != cfg.target_steps:
            return
        model.eval()
        metrics = {"step": step, **evaluate_policy(model, encoder, valid, cfg)}
        model.train()
        history.append(metrics)
        _log(f"target eval {metrics}")
        single = metrics["single_accuracy"]
        gain = metrics[f"majority_at_{cfg.valid_samples}_accuracy"] - single
        in_window = cfg.min_single_accuracy <= single <= cfg.max_single_accuracy
        # Prefer checkpoints inside the accuracy window, then the largest voting gain.
        rank = (in_window, gain if in_window else -abs(single - 0.5))
        if not kept or rank > kept["rank"]:
            kept.update(rank=rank, metrics=metrics,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})

    def loss_fn(batch):
        input_ids, mask, labels = batch
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    problems = iter_train_problems(seed=cfg.seed + 1_000_003)
    batches = _sft_batches(encoder, problems, cfg.batch_size, device, cfg.slip_prob, cfg.seed)
    taken = _optimize(model, batches, cfg.target_steps, cfg.target_lr, loss_fn, on_step, cfg.stage_time_budget_s)
    model.load_state_dict(kept["state"])
    model.eval()
    _log(f"target kept {kept['metrics']}")
    return model, {"steps_taken": taken, "selected": kept["metrics"], "history": history}


def train_draft(cfg: TrainConfig, encoder: Encoder, target, device) -> tuple[object, dict]:
    """Distil the target into the small draft shape (forward KL on solution tokens)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed + 1)
    draft = new_model(SHAPES["draft"]).to(device)

    def loss_fn(batch):
        input_ids, mask, labels = batch
        with torch.no_grad():
            teacher = target(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        student = draft(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        keep = labels[:, 1:] != IGNORE
        kl = F.kl_div(F.log_softmax(student[keep], -1), F.log_softmax(teacher[keep], -1),
                      log_target=True, reduction="batchmean")
        return kl

    problems = iter_train_problems(seed=cfg.seed + 3_000_017)
    # The draft reads the target's slipped solutions too: at serving time it must keep
    # proposing well after the target has made a mistake.
    batches = _sft_batches(encoder, problems, cfg.batch_size, device, cfg.slip_prob, cfg.seed + 1)
    taken = _optimize(draft, batches,
                      cfg.draft_steps, cfg.draft_lr, loss_fn, time_budget_s=cfg.stage_time_budget_s)
    return draft, {"steps_taken": taken,
                   "objective": "forward KL to the target's next-token distribution"}


def prm_dataset(model, encoder: Encoder, records: list[dict], cfg: TrainConfig) -> list[tuple]:
    """(problem, steps, labels) for sampled solutions of ``records``, labelled exactly."""
    samples = sample_solutions(model, encoder, [r["problem"] for r in records],
                               cfg.prm_samples_per_problem, 1.0, cfg.max_new_tokens)
    data = []
    for record, solutions in zip(records, samples):
        # The reference solution too: PRM800K-style data also holds fully correct solutions.
        for solution in [*solutions, record["solution"]]:
            steps = split_steps(solution)
            if steps:
                data.append((record["problem"], steps, label_steps(record["solution"], solution)))
    return data


def step_auc(scores: list[float], labels: list[bool]) -> float:
    """ROC-AUC of ``scores`` separating True from False labels (ties count half)."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        raise ValueError("AUC needs both correct and incorrect steps")
    order = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    # Mann-Whitney U with average ranks for ties.
    rank_sum, i = 0.0, 0
    while i < len(order):
        j = i
        while j < len(order) and order[j][0] == order[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2
        rank_sum += average_rank * sum(label for _, label in order[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def prm_step_scores(prm, encoder: Encoder, items: list[tuple], device, batch_size: int = 256) -> list[list[float]]:
    """P(good) / (P(good) + P(bad)) at each step tag of each (problem, steps, labels) item."""
    import torch

    scores = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        examples = [encoder.prm_example(p, s, y) for p, s, y in chunk]
        input_ids, mask, _ = encoder.batch(examples, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=device.type == "cuda"):
            logits = prm(input_ids=input_ids, attention_mask=mask).logits.float()
        pair = torch.softmax(logits[..., [encoder.good_id, encoder.bad_id]], dim=-1)[..., 0]
        for row in range(len(chunk)):
            positions = (input_ids[row] == encoder.tag_id).nonzero().flatten()
            scores.append(pair[row, positions].tolist())
    return scores


def train_prm(cfg: TrainConfig, encoder: Encoder, target, device) -> tuple[object, dict]:
    """Fine-tune a copy of the target as a step-level PRM on the target's own samples."""
    import torch

    torch.manual_seed(cfg.seed + 2)
    rng = random.Random(cfg.seed + 2)
    problems = iter_train_problems(seed=cfg.seed + 5_000_011)
    records = list(itertools.islice(problems, cfg.prm_problems))
    _log(f"sampling {cfg.prm_samples_per_problem} solutions for {len(records)} PRM problems")
    data = prm_dataset(target, encoder, records, cfg)
    held_out = prm_dataset(target, encoder, validation_problems(cfg.valid_problems), cfg)
    n_steps = sum(len(y) for _, _, y in data)
    n_good = sum(sum(y) for _, _, y in data)
    _log(f"PRM data: {len(data)} solutions, {n_steps} steps, {n_good / n_steps:.2%} correct")

    prm = new_model(SHAPES["prm"]).to(device)
    prm.load_state_dict(target.state_dict())

    def batches():
        while True:
            chunk = rng.sample(data, cfg.batch_size)
            yield encoder.batch([encoder.prm_example(p, s, y) for p, s, y in chunk], device)

    def loss_fn(batch):
        input_ids, mask, labels = batch
        return prm(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    taken = _optimize(prm, batches(), cfg.prm_steps, cfg.prm_lr, loss_fn,
                      time_budget_s=cfg.stage_time_budget_s)
    scores = prm_step_scores(prm, encoder, held_out, device)
    auc = step_auc([s for row in scores for s in row], [y for _, _, ys in held_out for y in ys])
    _log(f"PRM held-out step AUC {auc:.3f}")
    return prm, {"steps_taken": taken, "train_solutions": len(data), "train_steps": n_steps,
                 "train_correct_step_share": n_good / n_steps, "held_out_step_auc": auc}


STAGES = ("target", "draft", "prm")


def load_model(role: str, out_root: str | Path, device):
    """Load a model written by an earlier stage from ``out_root`` (float32, eval mode)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir(role, out_root)), dtype=torch.float32)
    return model.to(device).eval()


def train_all(out_root: str | Path, cfg: TrainConfig | None = None,
              stages: tuple[str, ...] = STAGES) -> dict:
    """Run ``stages`` of the recipe and write each model under ``out_root`` (see ``model_dir``).

    A later stage run alone loads the target written by an earlier run into the same
    ``out_root``. Returns the summary of the stages run; it is merged into
    ``out_root/training.json``.

    Raises:
        ValueError: an unknown stage.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    cfg = cfg or TrainConfig()
    device = _device()
    encoder = Encoder()
    out = Path(out_root)
    summary_path = out / "training.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(config=asdict(cfg), device=str(device))
    _log(f"device {device}; stages {stages}; config {asdict(cfg)}")

    def save(role: str, model) -> None:
        meta = {"role": role, "recipe": "tts_ray.testbed.train", "seed": cfg.seed,
                "parameters": SHAPES[role].num_parameters(), "training": summary[role]}
        write_model_files(model_dir(role, out), SHAPES[role], model.state_dict(), meta)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    if "target" in stages:
        target, summary["target"] = train_target(cfg, encoder, device)
        save("target", target)
    else:
        target = load_model("target", out, device)
    if "draft" in stages:
        draft, summary["draft"] = train_draft(cfg, encoder, target, device)
        save("draft", draft)
    if "prm" in stages:
        prm, summary["prm"] = train_prm(cfg, encoder, target, device)
        save("prm", prm)
    return summary
