"""``python -m tts_ray.eval.gpu plans`` on the committed speed profiles (CPU testbed, H100,
H200) and the ARITH calibration: what the planner chooses where, checked against the planner's
own rules and against what the measured curves say (docs/gpu.md)."""

from pathlib import Path

import pytest

from tts_ray.config import load_app_config
from tts_ray.constants import REPO_DIR
from tts_ray.eval import gpu

BUDGETS = (0.5, 1.0, 2.0, 4.0, 8.0)
H100 = "bench/results/gpu/profile-testbed-nvidia-h100-80gb-hbm3.json"


@pytest.fixture(scope="module")
def document():
    return gpu.plans_document(budgets=BUDGETS, methods=("majority", "auto"))


def table(document, source: str):
    return next(t for t in document["profiles"] if t["source"] == source)


def plans(document, source: str, method: str = "majority"):
    return {row["budget_s"]: row for row in table(document, source)["plans"] if row["method"] == method}


def test_default_profiles_are_the_cpu_one_and_every_committed_gpu_one(document):
    sources = [t["source"] for t in document["profiles"]]
    assert sources[0] == "testbed:profile-cpu" and H100 in sources
    assert len(sources) == 1 + len(list((REPO_DIR / "bench" / "results" / "gpu").glob("profile-testbed-*.json")))
    for t in document["profiles"]:
        assert [r["budget_s"] for r in t["plans"]] == [*BUDGETS, *BUDGETS]


def test_every_choice_fits_its_budget_and_is_the_best_of_the_pinned_pools(document):
    for t in document["profiles"]:
        for row in t["plans"]:
            chosen, pinned = row["chosen"], row["by_k"]
            feasible = {k: r for k, r in pinned.items() if not r.get("infeasible")}
            assert not chosen.get("infeasible") and feasible, (t["source"], row)
            assert chosen["predicted_s"] <= row["budget_s"]
            assert 1 <= chosen["branches"] <= 64
            # the free choice of pool is the pinned plan of the pool it chose, and no pinned
            # plan promises more accuracy (ties: the free choice is no slower)
            same = pinned[str(chosen["k"])]
            assert (same["branches"], same["predicted_s"]) == (chosen["branches"], chosen["predicted_s"])
            for r in feasible.values():
                assert chosen["expected_accuracy"] >= r["expected_accuracy"] - 1e-9
                if r["expected_accuracy"] == chosen["expected_accuracy"]:
                    assert chosen["predicted_s"] <= r["predicted_s"] + 1e-9
            assert row["speculates"] == (chosen["k"] > 0)


def test_cpu_speculates_everywhere_and_grows_b_with_the_budget(document):
    cpu = plans(document, "testbed:profile-cpu")
    assert all(row["speculates"] for row in cpu.values())
    b = [cpu[budget]["chosen"]["branches"] for budget in BUDGETS]
    assert b == sorted(b) and b[0] < b[-1]  # 2 cores: more budget buys more branches
    assert cpu[0.5]["chosen"]["branches"] <= 4
    ratio = table(document, "testbed:profile-cpu")["speculation"]["spec"]["4"]["ratio_by_concurrency"]
    assert ratio["1"] < 0.5 and ratio["64"] >= 0.99  # k=4 pays alone, not at 64 sequences


def test_on_the_h100_profile_the_draft_does_not_pay_and_b_is_large_at_any_budget(document):
    h100, cpu = plans(document, H100), plans(document, "testbed:profile-cpu")
    assert not any(row["speculates"] for row in h100.values())
    spec = table(document, H100)["speculation"]["spec"]["4"]
    assert spec["ratio_by_concurrency"]["1"] > 2 and spec["pays_at"] == [4]
    for budget in BUDGETS:
        # the calibrated majority curve is flat from about 25 branches (its table peaks at 29)
        assert h100[budget]["chosen"]["branches"] >= 25
        assert h100[budget]["chosen"]["branches"] >= cpu[budget]["chosen"]["branches"]
    # one k=4 branch alone is predicted slower than half a second there (8.4 ms a token at B = 1)
    assert h100[0.5]["by_k"]["4"].get("infeasible")


def test_flat_until_on_the_committed_curves(document):
    def flat(source, pool, k):
        return next(c["flat_until"] for c in table(document, source)["curves"] if (c["pool"], c["k"]) == (pool, k))

    # CPU: 8.28 ms at 2 sequences is 23% over 6.75 at one; H100: 2.50 at 2, then 3.39 at 4 (+29%)
    assert flat("testbed:profile-cpu", "plain", 0) == 1 and flat("testbed:profile-cpu", "spec", 4) == 1
    assert flat(H100, "plain", 0) == 2


def test_format_and_cli_write_the_table(tmp_path: Path, capsys):
    out = tmp_path / "plans.json"
    assert gpu.main(["plans", "--profiles", f"testbed:profile-cpu,{H100}", "--budgets", "1,4",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "flat_until(10%)" in text and "k=4 pinned" in text and "NVIDIA H100" in text
    import json

    written = json.loads(out.read_text())
    assert written["budgets_s"] == [1.0, 4.0] and len(written["profiles"]) == 2


def test_override_gives_every_gpu_engine_a_whole_gpu(tmp_path: Path):
    out = gpu.with_overrides(REPO_DIR / "deployments" / "testbed-gpu.yaml", tmp_path / "c.yaml",
                             accelerator_type="H200", num_gpus=1)
    config = load_app_config(out)
    assert [p.num_gpus for p in config.generators] == [1, 1] and config.reward.num_gpus == 1
    assert {p.accelerator_type for p in config.generators} == {"H200"}
    untouched = gpu.with_overrides(REPO_DIR / "deployments" / "local.yaml", tmp_path / "l.yaml", num_gpus=1)
    assert all(p.num_gpus is None for p in load_app_config(untouched).generators)  # CPU pools stay CPU
