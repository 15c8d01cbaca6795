"""Project-wide constants: paths, special tokens, seeds and engine defaults, kept in one place."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

# The bundled testbed models live inside the package so that a wheel carries them.
TESTBED_MODELS_DIR = PACKAGE_DIR / "testbed" / "models"
TARGET_MODEL_NAME = "arith-target"
DRAFT_MODEL_NAME = "arith-draft"
PRM_MODEL_NAME = "arith-prm"
# The testbed's speed profile and accuracy calibration (what the planner reads), also packaged.
TESTBED_PLANNER_DIR = PACKAGE_DIR / "testbed" / "planner"

# Shared, read-only material beside the checkout (never copied into the repo).
SHARED_DIR = Path(os.environ.get("TTS_RAY_SHARED_DIR", REPO_DIR.parent / "shared"))
MATH500_PATH = SHARED_DIR / "data" / "math500.jsonl"

# --- ARITH testbed -------------------------------------------------------------------------
ARITH500_SEED = 500
ARITH500_SIZE = 500
ARITH_LEVELS = (1, 2, 3, 4, 5)
# Training problems come from seeds far away from the test seed; test problems are also
# filtered out of training by exact text.
ARITH_TRAIN_SEED = 1_000_003
ARITH_VALID_SEED = 2_000_003

# --- Tokenizer (character level, shared by target, draft and PRM) ---------------------------
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
# The PRM reads a solution with STEP_TAG after every step and predicts GOOD or BAD there
# (the Math-Shepherd recipe), so a generation engine can score steps through logprobs.
STEP_TAG_TOKEN = "<|step|>"
GOOD_TOKEN = "<|good|>"
BAD_TOKEN = "<|bad|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    SYSTEM_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
    STEP_TAG_TOKEN,
    GOOD_TOKEN,
    BAD_TOKEN,
)
# Every printable ASCII character plus newline: all an ARITH problem or solution needs.
TOKENIZER_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = 128  # padded up from len(SPECIAL_TOKENS) + len(TOKENIZER_CHARS) = 106
MAX_MODEL_LEN = 1024

# --- vLLM on CPU ---------------------------------------------------------------------------
CPU_KVCACHE_SPACE_GIB = "1"
CPU_GPU_MEMORY_UTILIZATION = 0.2
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 160

# --- evaluation ------------------------------------------------------------------------------
# An evaluation's base seed S gives problem P the seed S + crc32(P's id) x EVAL_SEED_STRIDE, and
# the service gives P's branch i that seed + i: two problems' branch seeds never meet below
# 2**20 branches, and a problem's seed does not depend on which other problems are in the run.
EVAL_SEED_STRIDE = 2**20
MAX_EVAL_SEED = 2**62  # base seeds below this keep every problem's branch seeds below 2**63
# The planner benchmark's repeat r sends base seed S + r x BENCH_REPEAT_SEED_STRIDE: each repeat
# samples afresh, and a problem's branch seeds in two repeats never meet below 2**16 branches;
# at most MAX_BENCH_REPEATS of them stay inside one problem's stride (2**20).
BENCH_REPEAT_SEED_STRIDE = 2**16
MAX_BENCH_REPEATS = EVAL_SEED_STRIDE // BENCH_REPEAT_SEED_STRIDE
