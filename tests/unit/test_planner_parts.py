"""Pure parts of the planner: speed curves, calibration math, early stopping, the keeper."""

import math

import pytest
from pydantic import ValidationError

from tts_ray.config import AppConfig
from tts_ray.planner.calibration import (
    Calibration,
    ModelCalibration,
    TokenLimitedAccuracy,
    accuracy_by_tokens,
    accuracy_curves,
)
from tts_ray.planner.early_stop import (
    EarlyStopRule,
    prob_final_vote_unchanged,
    prob_leader_ahead,
    simulate,
    wave_sizes,
)
from tts_ray.planner.keeper import BranchObservation, BudgetKeeper
from tts_ray.planner.latency import band_factor, carried_factor
from tts_ray.planner.planner import Infeasible, PlanRequest
from tts_ray.planner.profile import ClusterProfile, PoolProfile, SpeedCurve


def test_speed_curve_interpolates_and_extrapolates_upwards():
    c = SpeedCurve(num_speculative_tokens=0, concurrency=[1, 4, 16], seconds_per_token=[0.01, 0.01, 0.02])
    assert c.seconds_per_token_at(0.5) == 0.01
    assert c.seconds_per_token_at(10) == pytest.approx(0.015)
    assert c.seconds_per_token_at(32) > 0.02
    assert c.flat_until(0.10) == 4


def test_speed_curve_rejects_bad_shapes():
    with pytest.raises(ValidationError):
        SpeedCurve(num_speculative_tokens=0, concurrency=[4, 1], seconds_per_token=[0.01, 0.01])
    with pytest.raises(ValidationError):
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 2], seconds_per_token=[0.01])


def test_profile_round_trip(tmp_path):
    profile = ClusterProfile(device="x", pools={"p": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1], seconds_per_token=[0.01])])})
    assert ClusterProfile.load(profile.save(tmp_path / "p.json")) == profile
    with pytest.raises(KeyError):
        profile.pools["p"].curve(4)


def test_accuracy_curves_from_samples():
    problems = [
        # right answer is the majority: majority accuracy rises with B
        {"answers": ["1", "1", "1", "2", "3"], "correct": [True, True, True, False, False],
         "scores": [0.9, 0.8, 0.7, 0.1, 0.2]},
        # right answer is a minority but scores well: weighted vote and best-of-n find it
        {"answers": ["5", "7", "7", "7", None], "correct": [True, False, False, False, False],
         "scores": [0.99, 0.1, 0.1, 0.1, 0.0]},
    ]
    curves = accuracy_curves(problems, seed=1)
    assert set(curves) == {"single", "majority", "weighted_majority", "best_of_n"}
    assert curves["single"][0] == pytest.approx(curves["majority"][0])
    assert curves["majority"][0] == pytest.approx((3 / 5 + 1 / 5) / 2, abs=0.08)
    assert curves["majority"][-1] == 0.5  # all 5 samples: problem 1 right, problem 2 wrong
    assert curves["best_of_n"][-1] == 1.0
    with pytest.raises(ValueError):
        accuracy_curves([])
    with pytest.raises(ValueError):
        accuracy_curves([problems[0], {"answers": ["1"], "correct": [True], "scores": [1.0]}])


def test_expected_max_length_grows_with_branches_and_is_capped():
    cal = ModelCalibration(accuracy={"majority": [0.5]}, lengths=[10, 20, 30, 40], max_tokens=100)
    assert cal.expected_max_length(1, 100) == pytest.approx(25)
    assert cal.expected_max_length(4, 100) > cal.expected_max_length(2, 100) > 25
    assert cal.expected_max_length(64, 100) == pytest.approx(40, abs=0.01)
    assert cal.expected_max_length(8, 15) <= 15
    assert cal.expected_accuracy("majority", 16) == 0.5  # flat beyond the calibrated range
    assert cal.expected_accuracy("dvts", 4) is None


def test_early_stop_rule():
    assert prob_leader_ahead(4, 0) == pytest.approx(31 / 32)
    assert prob_leader_ahead(3, 1) == pytest.approx(26 / 32)
    rule = EarlyStopRule(window=4, confidence=0.95)
    assert rule.settled(["7", "7", "7", "7"])
    assert not rule.settled(["7", "7", "7", "8"])
    assert not rule.settled([None, None])
    assert rule.settled(["7"] * 7 + ["8"] * 1)
    with pytest.raises(ValueError):
        EarlyStopRule(window=0)
    with pytest.raises(ValueError):
        EarlyStopRule(criterion="vibes")


def test_final_vote_criterion_asks_whether_the_rest_could_change_the_answer():
    assert prob_final_vote_unchanged([5, 1], remaining=3) == 1.0  # a lead of 4 cannot be caught in 3
    assert prob_final_vote_unchanged([2, 2], remaining=0) == 0.0  # a tie now
    assert prob_final_vote_unchanged([3, 3], remaining=10) < 0.5
    # a lead grows safer with more votes behind it and fewer branches left to come
    assert (prob_final_vote_unchanged([3, 1], 12) < prob_final_vote_unchanged([6, 2], 8)
            < prob_final_vote_unchanged([9, 3], 4))
    assert prob_final_vote_unchanged([4, 2, 1, 1], 8) == prob_final_vote_unchanged((4, 2, 1, 1), 8)  # seeded
    rule = EarlyStopRule(window=4, confidence=0.9, criterion="final_vote")
    # 5 of 8 against 2 and 1 with 8 to come settles the 16-branch vote; Beta wants more
    answers = ["7"] * 5 + ["8"] * 2 + ["9"]
    assert rule.settled(answers, remaining=8)
    assert not EarlyStopRule(window=4, confidence=0.9).settled(answers, remaining=8)
    assert not rule.settled(["7", "7", "8", "9"], remaining=12)


def test_simulate_early_stopping_on_recorded_samples():
    # problem 1: unanimous (stops after the first window); problem 2: eight answers twice each,
    # never settled (runs on), and wrong whichever wins
    easy = {"answers": ["7"] * 16, "correct": [True] * 16, "lengths": [10] * 16}
    split = {"answers": [str(i) for i in range(8)] * 2, "correct": [False] * 16, "lengths": [20] * 16}
    row = simulate([easy, split], EarlyStopRule(window=4, confidence=0.95), branches=16, orders=4)
    assert row["accuracy_full"] == row["accuracy_early"] == pytest.approx(0.5)
    assert row["branches_used"] == pytest.approx((4 + 16) / 2)
    # tokens: easy 40 of 160, split all 320 -> saving 120 / 480
    assert row["token_saving"] == pytest.approx(120 / 480)
    with pytest.raises(ValueError):
        simulate([easy], EarlyStopRule(), branches=32)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _keeper(profile=True, clock=None, calibrated=False):
    """Pool "a" (2 replicas x 8 slots) profiled flat at 0.01 s per token; ``calibrated``: every
    branch of model "m" is 100 tokens long, so a 100-token plan's prediction is a time, not a
    worst case."""
    config = AppConfig.model_validate({"generators": [
        {"name": "a", "model_id": "m", "model_source": "x", "num_replicas": 2, "max_ongoing_requests": 8}]})
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01],
                   prefill_s=0.0)])}) if profile else None
    calibration = Calibration(dataset="s", problems=1, samples_per_problem=8, temperature=0.7, models={
        "m": ModelCalibration(accuracy={"majority": [0.5] * 8, "single": [0.5]}, lengths=[100], max_tokens=100)}) \
        if calibrated else None
    return BudgetKeeper(config, prof, calibration, ewma_alpha=0.5, clock=clock or FakeClock())


def test_keeper_reserves_and_releases_branches():
    keeper = _keeper()
    plan = keeper.admit("r1", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=6))
    assert plan.pool == "a" and plan.num_branches == 6
    assert keeper.status()["pools"]["a"]["inflight_branches"] == 6
    keeper.admit("r2", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=2))
    assert keeper.status()["pools"]["a"]["active_requests"] == 2
    keeper.release("r1")
    keeper.release("r1")  # a repeated release changes nothing
    status = keeper.status()["pools"]["a"]
    assert (status["inflight_branches"], status["active_requests"]) == (2, 1)


def test_keeper_learns_the_live_speed_and_the_prediction_error():
    keeper = _keeper()
    keeper.admit("r", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1))
    # 100 tokens in 2 s: 0.02 s per token against 0.01 profiled, so the factor moves to 2.
    keeper.release("r", [BranchObservation(num_tokens=100, elapsed_s=2.0, spec_accepted_tokens=30,
                                           spec_verify_steps=10)], predicted_s=1.0, actual_s=2.0)
    status = keeper.status()
    assert status["pools"]["a"]["speed_factor"] == pytest.approx(1.5)  # EWMA, alpha 0.5
    assert status["pools"]["a"]["tokens_per_step"] == pytest.approx(4.0)
    assert status["prediction_error"]["mean_signed"] == pytest.approx(1.0)
    slower = keeper.admit("s", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1))
    assert slower.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * 1.5)


def _shared_keeper(group: str | None = "node", slowdown: float = 1.0, clock=None, learn: bool = True):
    """Two one-replica pools of one model, k=0, both profiled at 0.01 s per token, flat."""
    config = AppConfig.model_validate({"generators": [
        {"name": name, "model_id": "m", "model_source": "x", "max_ongoing_requests": 16,
         "compute_group": group, "compute_group_slowdown": slowdown} for name in ("a", "b")],
        "router": {"learn_group_slowdown": learn}})
    prof = ClusterProfile(device="x", pools={name: PoolProfile(model_id="m", curves=[SpeedCurve(
        num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01])]) for name in "ab"})
    return BudgetKeeper(config, prof, None, ewma_alpha=0.5, clock=clock or FakeClock())


def _speculating_b(keeper) -> None:
    """Make pool b the one of k=4 (in the ledger and the profile): a request's k picks its pool."""
    keeper.loads["b"].num_speculative_tokens = 4
    keeper.latency.profile.pools["b"].curves[0].num_speculative_tokens = 4


def _one_branch(keeper, clock, name: str, k: int, elapsed_s: float, busy_share: float = 1.0) -> None:
    """One request of one branch on the pool of draft length ``k``, 100 tokens in ``elapsed_s``;
    the other pool's request ``"busy"`` (if in flight) stays busy for the first ``busy_share``
    of it and is then released. The clock moves by 1% of ``elapsed_s`` (only the busy share
    of the request's life matters here), so the speed factors hardly fade in between."""
    lived_s = elapsed_s / 100
    keeper.admit(name, PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1,
                                   num_speculative_tokens=k))
    if busy_share < 1.0:
        clock.now += lived_s * busy_share
        keeper.release("busy")
        clock.now += lived_s * (1 - busy_share)
    else:
        clock.now += lived_s
    keeper.release(name, [BranchObservation(num_tokens=100, elapsed_s=elapsed_s)])


def test_the_group_slowdown_is_learned_from_branches_alone_and_beside_a_busy_pool():
    clock = FakeClock()
    keeper = _shared_keeper(slowdown=0.3, clock=clock)
    _speculating_b(keeper)
    _one_branch(keeper, clock, "alone", 0, 2.0)  # pool a alone: twice the profile
    assert keeper.status()["pools"]["a"]["group_slowdown_samples"] == 0
    keeper.admit("busy", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4,
                                     num_speculative_tokens=4))
    for i in range(9):  # beside busy b: three times the profile, 1.5 times a's speed alone
        _one_branch(keeper, clock, f"shared{i}", 0, 3.0)
    assert keeper.loads["a"].group_slowdown == pytest.approx(0.3)  # too few samples: the configured one
    _one_branch(keeper, clock, "shared9", 0, 3.0)
    status = keeper.status()["pools"]["a"]
    assert status["group_slowdown"] == pytest.approx(0.5) and status["group_slowdown_samples"] == 10
    assert status["contention"] == pytest.approx(1.5)  # b is still busy
    # The next plan on a beside busy b is priced at the learned slowdown
    factor = keeper.loads["a"].speed_factor_at(1)
    plan = keeper.admit("next", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1,
                                            num_speculative_tokens=0))
    assert plan.pool == "a" and plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * factor * 1.5)
    # b was never alone: nothing to compare its speed with, it keeps the configured slowdown
    assert keeper.loads["b"].group_slowdown == pytest.approx(0.3)


def _alone_then_beside_busy_b(keeper, clock, shared_branches: int) -> None:
    """One branch on a alone in 2 s, then ``shared_branches`` of 3 s each beside a busy b."""
    _speculating_b(keeper)
    _one_branch(keeper, clock, "alone", 0, 2.0)
    keeper.admit("busy", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4,
                                     num_speculative_tokens=4))
    for i in range(shared_branches):
        _one_branch(keeper, clock, f"shared{i}", 0, 3.0)


def test_a_learned_slowdown_keeps_the_speed_factor_at_the_pools_speed_alone():
    clock = FakeClock()
    keeper = _shared_keeper(slowdown=0.3, clock=clock)
    _alone_then_beside_busy_b(keeper, clock, shared_branches=30)
    # 3 s beside b = 2 (alone) x 1.5 (learned): the factor of one sequence settles back at 2;
    # priced with the configured 0.3 it would read 3 / 1.3 = 2.31 for the pool alone
    assert keeper.loads["a"].speed_factor_at(1) == pytest.approx(2.0, abs=0.01)


def test_branches_beside_a_neighbour_for_part_of_their_life_teach_no_slowdown():
    clock = FakeClock()
    keeper = _shared_keeper(slowdown=0.3, clock=clock)
    _speculating_b(keeper)
    _one_branch(keeper, clock, "alone", 0, 2.0)
    for i in range(12):  # b busy for the first 30% of each branch's life only
        keeper.admit("busy", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4,
                                         num_speculative_tokens=4))
        _one_branch(keeper, clock, f"mixed{i}", 0, 3.0, busy_share=0.3)
    assert keeper.status()["pools"]["a"]["group_slowdown_samples"] == 0
    assert keeper.loads["a"].group_slowdown == pytest.approx(0.3)


def test_the_group_slowdown_stays_configured_when_learning_is_off():
    clock = FakeClock()
    keeper = _shared_keeper(slowdown=0.3, clock=clock, learn=False)
    _alone_then_beside_busy_b(keeper, clock, shared_branches=12)
    assert keeper.loads["a"].group_slowdown == pytest.approx(0.3)
    assert keeper.status()["pools"]["a"]["group_slowdown_samples"] == 0


def _overhead_keeper(learn: bool = True, clock=None):
    """One one-replica pool of model "m", profiled flat at 0.01 s per token, no prefill."""
    config = AppConfig.model_validate({"generators": [
        {"name": "a", "model_id": "m", "model_source": "x", "max_ongoing_requests": 8}],
        "router": {"learn_branch_overhead": learn}})
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01],
                   prefill_s=0.0)])})
    return BudgetKeeper(config, prof, None, ewma_alpha=0.5, clock=clock or FakeClock())


def _branches_with_overhead(keeper, clock, count: int, overhead_s: float, factor: float,
                            stopped: bool = False) -> None:
    """``count`` one-branch requests in turn, 20 to 160 tokens, each taking ``overhead_s`` plus
    its tokens at ``factor`` x the profile's 0.01 s; the clock moves 0.5 s per request."""
    for i in range(count):
        tokens = 20 + (i * 37) % 141
        keeper.admit(f"o{i}", PlanRequest(budget_s=100, max_tokens=160, method="single", branches=1))
        clock.now += 0.5
        keeper.release(f"o{i}", [BranchObservation(num_tokens=tokens, elapsed_s=overhead_s + tokens * 0.01 * factor,
                                                   stopped=stopped)])


def test_the_serving_overhead_per_branch_is_learned_apart_from_the_decode_speed():
    clock = FakeClock()
    keeper = _overhead_keeper(clock=clock)
    _branches_with_overhead(keeper, clock, 60, overhead_s=0.3, factor=1.5)
    assert keeper.status()["pools"]["a"]["branch_overhead_s"] == pytest.approx(0.3, abs=0.01)
    # the factor is the decode speed's alone, not 1.5 plus the overhead spread over the tokens
    assert keeper.loads["a"].speed_factor_at(1) == pytest.approx(1.5, abs=0.02)
    plan = keeper.admit("next", PlanRequest(budget_s=100, max_tokens=100, method="single", branches=1))
    assert plan.predicted_parts_s["overhead"] == pytest.approx(0.3, abs=0.01)
    assert plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * 1.5, rel=0.02)


def test_without_learning_the_overhead_reads_as_a_slower_decode():
    clock = FakeClock()
    keeper = _overhead_keeper(learn=False, clock=clock)
    _branches_with_overhead(keeper, clock, 60, overhead_s=0.3, factor=1.5)
    assert keeper.status()["pools"]["a"]["branch_overhead_s"] == 0.0
    assert keeper.loads["a"].speed_factor_at(1) > 1.6
    plan = keeper.admit("next", PlanRequest(budget_s=100, max_tokens=100, method="single", branches=1))
    assert "overhead" not in plan.predicted_parts_s


def test_the_overhead_needs_enough_recent_finished_branches():
    clock = FakeClock()
    keeper = _overhead_keeper(clock=clock)
    _branches_with_overhead(keeper, clock, 29, overhead_s=0.3, factor=1.0)
    assert keeper.loads["a"].branch_overhead_s == 0.0  # 29 < 30
    _branches_with_overhead(keeper, clock, 60, overhead_s=0.3, factor=1.0, stopped=True)
    assert keeper.loads["a"].branch_overhead_s == 0.0  # stopped branches do not count
    _branches_with_overhead(keeper, clock, 40, overhead_s=0.3, factor=1.0)
    assert keeper.loads["a"].branch_overhead_s == pytest.approx(0.3, abs=0.01)
    clock.now += 61  # every branch older than a minute: nothing left to fit
    assert keeper.status()["pools"]["a"]["branch_overhead_s"] == 0.0


def test_branches_of_one_length_fit_no_overhead():
    clock = FakeClock()
    keeper = _overhead_keeper(clock=clock)
    for i in range(40):
        keeper.admit(f"e{i}", PlanRequest(budget_s=100, max_tokens=160, method="single", branches=1))
        keeper.release(f"e{i}", [BranchObservation(num_tokens=100, elapsed_s=1.3)])
    assert keeper.loads["a"].branch_overhead_s == 0.0  # an intercept needs different lengths
    assert keeper.loads["a"].speed_factor_at(1) == pytest.approx(1.3)


def test_the_live_speed_factor_is_learned_per_concurrency_band():
    keeper = _keeper()  # 2 replicas, 0.01 s per token at any concurrency, EWMA alpha 0.5
    keeper.admit("big", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=16))
    keeper.release("big", [BranchObservation(num_tokens=100, elapsed_s=4.0)])  # 8 a replica, 4x slow
    load = keeper.loads["a"]
    assert load.speed_factor_at(8) == pytest.approx(2.5)
    assert load.speed_factor_at(4) == pytest.approx(2.5)  # the band next to it borrows
    assert load.speed_factor_at(16) == pytest.approx(2.5)
    assert load.speed_factor_at(1) == 1.0  # two bands below or more: the profile, not a distant load
    # above every learned band: the highest one below it, carried up (the machine slower than
    # the profile at 8 sequences is not faster at 64)
    assert load.speed_factor_at(64) == pytest.approx(2.5)
    for i in range(2):  # one branch, twice as slow as profiled, twice
        keeper.admit(f"one{i}", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1))
        keeper.release(f"one{i}", [BranchObservation(num_tokens=100, elapsed_s=2.0)])
    assert load.speed_factor_at(1) == pytest.approx(1.75)  # from the profile's 1 towards 2, twice
    assert load.speed_factor_at(2) == pytest.approx(1.75)  # band 1: only band 0 next to it is learned
    assert load.speed_factor_at(3) == pytest.approx(2.5) and load.speed_factor_at(8) == pytest.approx(2.5)
    load.speed_factors[2] = 2.0  # 3-4 sequences learned too: band 1 takes the mean of both neighbours
    assert load.speed_factor_at(2) == pytest.approx((1.75 + 2.0) / 2)
    del load.speed_factors[2]
    status = keeper.status()["pools"]["a"]
    assert status["speed_factor_by_concurrency"] == {"<=1": 1.75, "<=8": 2.5}
    assert status["speed_factor"] == pytest.approx(1.75)  # idle: one sequence
    alone = keeper.admit("next", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1))
    assert alone.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * 1.75)


def test_a_factor_carried_up_keeps_its_excess_seconds_per_token():
    spt = {3: 0.01, 4: 0.015, 5: 0.02}  # the profile at 8, 16, 32 sequences
    assert carried_factor({3: 1.5}, 5, band_seconds_per_token=spt) == pytest.approx(1.25)
    assert carried_factor({3: 0.8}, 5, band_seconds_per_token=spt) == pytest.approx(0.9)  # faster: nearer 1 too
    assert carried_factor({3: 1.5}, 5) == pytest.approx(1.5)  # without the profile: the ratio
    # carried down, the ratio (the excess of a large batch would make one branch look slow)
    assert carried_factor({5: 2.0}, 3, band_seconds_per_token=spt) == pytest.approx(2.0)
    # a band with a taught neighbour takes the neighbours' mean, not a carried value
    assert band_factor({3: 1.5}, 4, spt) == pytest.approx(1.5)


def test_the_keeper_prices_bands_nothing_taught_by_the_excess_with_speed_carry_excess():
    def keeper(carry):
        config = AppConfig.model_validate({"generators": [
            {"name": "a", "model_id": "m", "model_source": "x", "max_ongoing_requests": 64}],
            "router": {"speed_carry": carry}})
        prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[SpeedCurve(
            num_speculative_tokens=0, concurrency=[1, 32], seconds_per_token=[0.01, 0.04])])})
        return BudgetKeeper(config, prof, None, ewma_alpha=0.5, clock=FakeClock())

    for carry, factor_at_32 in (("factor", 2.0), ("excess", 1 + (2.0 - 1) * 0.01 / 0.04)):
        k = keeper(carry)
        k.loads["a"].speed_factors = {0: 2.0}  # one sequence: twice the profile
        assert k.loads["a"].speed_factor_at(32) == pytest.approx(factor_at_32)
        plan = k.admit("r", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=32))
        assert plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.04 * factor_at_32)
    assert keeper("factor").loads["a"].band_seconds_per_token == {}


def test_pools_sharing_a_device_slow_each_other_down():
    keeper = _shared_keeper()
    request = PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=2)
    first = keeper.admit("r1", request)
    assert first.predicted_parts_s["decode"] == pytest.approx(100 * 0.01)  # alone on the device
    status = keeper.status()["pools"]
    other = "b" if first.pool == "a" else "a"
    assert status[other]["contention"] == 2 and status[first.pool]["contention"] == 1
    # The busy pool decodes alone; the idle one would share the device: the planner stays.
    second = keeper.admit("r2", request)
    assert second.pool == first.pool
    assert second.predicted_parts_s["decode"] == pytest.approx(100 * 0.01)
    keeper.release("r1")
    keeper.release("r2")
    assert keeper.status()["pools"][other]["contention"] == 1


def test_contention_doubles_the_prediction_and_is_divided_out_of_the_speed_factor():
    keeper = _shared_keeper()
    keeper.admit("busy", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4))
    idle = "b" if keeper.admitted["busy"].pool == "a" else "a"
    # Only the idle pool speculates 4 tokens (in the ledger): asking for k=4 sends the request there.
    keeper.loads[idle].num_speculative_tokens = 4
    keeper.latency.profile.pools[idle].curves[0].num_speculative_tokens = 4
    plan = keeper.admit("r", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1,
                                         num_speculative_tokens=4))
    assert plan.pool == idle
    assert plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * 2)
    # 100 tokens in 2 s while sharing the device: exactly the profile at half speed, so the
    # live factor stays 1 (without the contention term it would have learned 2).
    keeper.release("r", [BranchObservation(num_tokens=100, elapsed_s=2.0)])
    assert keeper.status()["pools"][idle]["speed_factor"] == pytest.approx(1.0)
    # Once the busy pool is free, the same observation means a slower device than profiled.
    keeper.release("busy")
    keeper.admit("r2", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1,
                                   num_speculative_tokens=4))
    keeper.release("r2", [BranchObservation(num_tokens=100, elapsed_s=2.0)])
    assert keeper.status()["pools"][idle]["speed_factor"] == pytest.approx(1.5)  # EWMA towards 2


def test_engines_with_cores_of_their_own_slow_each_other_by_the_configured_share():
    keeper = _shared_keeper(slowdown=0.4)
    keeper.admit("busy", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4))
    idle = "b" if keeper.admitted["busy"].pool == "a" else "a"
    assert keeper.status()["pools"][idle]["contention"] == pytest.approx(1.4)
    keeper.loads[idle].num_speculative_tokens = 4
    keeper.latency.profile.pools[idle].curves[0].num_speculative_tokens = 4
    plan = keeper.admit("r", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1,
                                         num_speculative_tokens=4))
    assert plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.01 * 1.4)
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x",
                                                  "compute_group_slowdown": 1.5}]})


def test_pools_without_a_compute_group_do_not_interact():
    keeper = _shared_keeper(group=None)
    keeper.admit("r1", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=2))
    assert all(p["contention"] == 1 for p in keeper.status()["pools"].values())


def test_keeper_reports_the_prediction_error_per_pool():
    keeper = _shared_keeper()
    plan = keeper.admit("r", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=1))
    keeper.release("r", predicted_s=1.0, actual_s=1.5)
    status = keeper.status()
    assert status["pools"][plan.pool]["prediction_error"] == {"requests": 1, "median_abs": 0.5,
                                                              "mean_signed": 0.5}
    other = "b" if plan.pool == "a" else "a"
    assert status["pools"][other]["prediction_error"]["requests"] == 0
    assert status["prediction_error"]["requests"] == 1


def test_keeper_learns_the_merge_margin_from_requests_cut_at_their_deadline():
    keeper = _keeper()
    floor = keeper.config.router.merge_margin_s
    assert keeper.merge_margin_s() == floor
    for i, needed in enumerate([0.05, 0.3, 0.35, 0.4, 0.5, 0.25]):
        keeper.admit(f"r{i}", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1))
        keeper.release(f"r{i}", needed_margin_s=needed)
    # 6 observations: the 95th percentile (interpolated: 0.4 + 0.75 x 0.1), above the floor
    assert keeper.merge_margin_s() == pytest.approx(0.475)
    plan = keeper.admit("p", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1))
    assert plan.merge_margin_s == pytest.approx(0.475)
    # The predicted latency keeps the configured merge time (what an uncut request waits);
    # the learned margin is kept free before the deadline: a plan must fit with it.
    assert plan.predicted_parts_s["merge"] == pytest.approx(floor)
    assert plan.predicted_s == pytest.approx(100 * 0.01 + floor)
    with pytest.raises(Infeasible):
        keeper.admit("q", PlanRequest(budget_s=1.3, max_tokens=100, method="majority", branches=1))
    assert keeper.status()["merge_margin_s"] == pytest.approx(0.475)
    keeper.release("p", needed_margin_s=30.0)  # an outlier is capped
    assert keeper.merge_margin_s() == pytest.approx(1.0)


def test_learned_corrections_fade_when_nothing_refreshes_them():
    clock = FakeClock()
    keeper = _keeper(clock=clock)
    for i in range(6):
        keeper.admit(f"r{i}", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1))
        # 100 tokens in 3 s: three times the profiled time
        keeper.release(f"r{i}", [BranchObservation(num_tokens=100, elapsed_s=3.0)], needed_margin_s=0.8)
    assert keeper.merge_margin_s() == pytest.approx(0.8)
    slow = keeper.status()["pools"]["a"]["speed_factor"]
    assert slow > 2.9
    # A budget of 2 s is out of reach now (3 s of decoding predicted)...
    with pytest.raises(Infeasible):
        keeper.admit("x", PlanRequest(budget_s=2, max_tokens=100, method="majority", branches=1))
    # ...and stays so for a moment, but not for ever: after one half-life the factor is half
    # way back to the profile, and a minute after the last cut request the margin is the floor.
    clock.now += 10
    keeper.admit("y", PlanRequest(budget_s=60, max_tokens=100, method="majority", branches=1))
    assert keeper.status()["pools"]["a"]["speed_factor"] == pytest.approx(1 + (slow - 1) / 2)
    clock.now += 51
    assert keeper.merge_margin_s() == keeper.config.router.merge_margin_s
    plan = keeper.admit("z", PlanRequest(budget_s=2, max_tokens=100, method="majority", branches=1))
    assert plan.predicted_s < 2


def test_an_idle_pool_fades_to_the_speed_of_its_compute_group_not_to_the_profile():
    clock = FakeClock()
    curve = [SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01],
                        prefill_s=0.0)]
    pools = {name: PoolProfile(model_id="m", curves=curve) for name in ("a", "b", "far")}
    group = {"model_id": "m", "model_source": "x", "compute_group": "node"}
    config = AppConfig.model_validate({"generators": [
        {"name": "a", **group}, {"name": "b", **group}, {"name": "far", "model_id": "m", "model_source": "x"}]})
    keeper = BudgetKeeper(config, ClusterProfile(device="x", pools=pools), None, ewma_alpha=0.5, clock=clock)
    # The machine runs at half the profile's speed: every pool's one-branch band learned 2.
    for load in keeper.loads.values():
        load.speed_factors = {0: 2.0}
    # Pool a keeps decoding at that speed (its branches teach it 2 again every second); b and
    # far go idle for a minute (six half-lives).
    for _ in range(60):
        clock.now += 1
        keeper._fade_speed_factors()
        keeper.loads["a"].speed_factors[0] = 2.0
        keeper.band_observed_at["a"][0] = clock.now
    # b shares a's device: it rests at a's level; far is on its own device: back to the profile
    assert keeper.loads["b"].speed_factors[0] == pytest.approx(2.0, abs=0.01)
    assert keeper.loads["far"].speed_factors[0] == pytest.approx(1 + 0.5 ** 6, abs=0.02)
    # Once a goes idle too, no branch sets a level any more: both return to the profile
    # (faded towards each other they would keep 2 for ever).
    for _ in range(60):
        clock.now += 1
        keeper._fade_speed_factors()
    assert keeper.loads["a"].speed_factors[0] == pytest.approx(keeper.loads["b"].speed_factors[0], abs=0.05)
    assert keeper.loads["b"].speed_factors[0] < 1.1


def test_a_band_the_stream_left_fades_to_the_live_band_nearest_it_not_to_the_profile():
    keeper = _keeper()
    clock, load = keeper.clock, keeper.loads["a"]
    # The machine runs 3.7 times slower than the profile at 5 to 8 sequences, where the stream
    # decodes now (band 3, taught every second); a plan of 16 once ran at band 4, 4 times slow,
    # band 5 at 2.0, and band 0 (one branch alone) was last seen at 2.
    load.speed_factors = {0: 2.0, 3: 3.7, 4: 4.0, 5: 2.0}
    for _ in range(60):  # six half-lives
        clock.now += 1
        keeper._fade_speed_factors()
        load.speed_factors[3] = 3.7
        keeper.band_observed_at["a"][3] = clock.now
    # every band rests at the live band's factor: faded to the profile's 1, band 5 would make
    # the plan of 32 look fast again, and band 0 would make one branch look fast
    assert load.speed_factors[4] == pytest.approx(3.7, abs=0.01)
    assert load.speed_factors[5] == pytest.approx(3.7 - 1.7 * 0.5 ** 6, abs=0.02)
    assert load.speed_factors[0] == pytest.approx(3.7 - 1.7 * 0.5 ** 6, abs=0.02)
    # Once nothing decodes, no band sets a level: all return to the profile.
    for _ in range(60):
        clock.now += 1
        keeper._fade_speed_factors()
    assert max(load.speed_factors.values()) < 1.1


def test_an_idle_pool_fades_to_the_nearest_live_band_of_its_group():
    keeper = _shared_keeper()
    clock, a, b = keeper.clock, keeper.loads["a"], keeper.loads["b"]
    # the stream decodes on pool a at band 3 (3 times slow); pool b last ran a plan at band 5
    a.speed_factors, b.speed_factors = {3: 3.0}, {3: 1.0, 5: 1.0}
    for _ in range(60):
        clock.now += 1
        keeper._fade_speed_factors()
        a.speed_factors[3] = 3.0
        keeper.band_observed_at["a"][3] = clock.now
    # band 3: the neighbour's same band; band 5, which a has not taught: a's nearest live band,
    # not the profile (which made b's larger plans look faster than a's)
    assert b.speed_factors[3] == pytest.approx(3.0, abs=0.05)
    assert b.speed_factors[5] == pytest.approx(3.0, abs=0.05)


def test_an_idle_pool_of_a_compute_group_takes_the_speed_spread_of_the_group():
    curves = [SpeedCurve(num_speculative_tokens=k, concurrency=[1, 64], seconds_per_token=[0.01, 0.01],
                         prefill_s=0.0) for k in (0, 4)]
    pools = {name: PoolProfile(model_id="m", curves=curves) for name in ("a", "b", "far")}
    spec = {"method": "ngram", "num_speculative_tokens": 4}
    config = AppConfig.model_validate({"generators": [
        {"name": "a", "model_id": "m", "model_source": "x", "compute_group": "node"},
        {"name": "b", "model_id": "m", "model_source": "x", "compute_group": "node", "speculative": spec},
        {"name": "far", "model_id": "m", "model_source": "x", "speculative": spec}]})
    keeper = BudgetKeeper(config, ClusterProfile(device="x", pools=pools), None, clock=FakeClock())
    # 30 one-branch requests for k = 0 (pool a), 0.7, 1 and 2 times as slow as planned in turn
    one = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1, num_speculative_tokens=0)
    for i in range(30):
        assert keeper.admit(f"r{i}", one).pool == "a"
        keeper.release(f"r{i}", [BranchObservation(num_tokens=100, elapsed_s=(0.7, 1.0, 2.0)[i % 3])])
    spread = keeper.status()["pools"]
    assert spread["a"]["speed_spread"][-1] > 1.5
    # b shares a's device and has no branches of its own: a's spread; far is on its own: none
    assert spread["b"]["speed_spread"] == spread["a"]["speed_spread"]
    assert spread["far"]["speed_spread"] == [1.0]


def test_keeper_margin_stays_fixed_when_not_adaptive():
    config = AppConfig.model_validate({
        "generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
        "router": {"merge_margin_s": 0.2, "adaptive_merge_margin": False}})
    keeper = BudgetKeeper(config, None, None)
    for i in range(10):
        keeper.admit(f"r{i}", PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1))
        keeper.release(f"r{i}", needed_margin_s=0.9)
    assert keeper.merge_margin_s() == 0.2


def test_finish_probability_and_accuracy_by_deadline():
    model = ModelCalibration(accuracy={"majority": [0.5, 0.5, 0.7, 0.8], "single": [0.5]},
                             lengths=[10, 20, 30, 40], max_tokens=35)
    assert model.finish_probability(25, 35) == 0.5
    assert model.finish_probability(0, 35) == 0.0
    assert model.finish_probability(35, 35) == 1.0  # a branch stops at max_tokens
    assert model.accuracy_by_deadline("majority", 3, 1.0) == pytest.approx(0.7)
    assert model.accuracy_by_deadline("majority", 1, 0.5) == pytest.approx(0.25)
    # K ~ Binomial(3, 0.5): P(1) = P(2) = 3/8 (accuracy 0.5), P(3) = 1/8 (0.7), P(0) = 1/8 (none)
    assert model.accuracy_by_deadline("majority", 3, 0.5) == pytest.approx(0.75 * 0.5 + 0.125 * 0.7)
    assert model.accuracy_by_deadline("majority", 4, 0.0) == 0.0
    assert model.accuracy_by_deadline("best_of_n", 2, 0.5) is None


def _problems(lengths_of):
    """Two problems, 4 samples each, every answer right: accuracy is whether a branch finishes."""
    return [{"answers": ["7"] * 4, "correct": [True] * 4, "scores": None, "lengths": lengths_of(i)}
            for i in range(2)]


def test_deadline_table_cuts_branches_per_problem():
    # Lengths set by the problem (as on the testbed): problem 0 is short, problem 1 long.
    same = accuracy_by_tokens(_problems(lambda i: [20 + 40 * i] * 4), max_tokens=100, draws=8)
    assert same.tokens == [20, 60, 100]
    assert same.at("majority", 1, 20) == same.at("majority", 4, 20) == 0.5  # more branches: no insurance
    assert same.at("majority", 1, 100) == 1.0
    assert same.at("majority", 4, 40) == pytest.approx(0.75)  # linear between 20 (0.5) and 60 (1.0)
    assert same.at("majority", 2, 10) == pytest.approx(0.25)  # towards 0 at 0 tokens
    assert same.at("majority", 99, 1000) == 1.0 and same.at("best_of_n", 1, 50) is None
    # Lengths spread within each problem: two of four branches are short, so more branches insure.
    spread = accuracy_by_tokens(_problems(lambda i: [20, 20, 60, 60]), max_tokens=100, draws=64)
    assert spread.at("majority", 1, 20) == pytest.approx(0.5, abs=0.15)
    assert spread.at("majority", 4, 20) == 1.0


def test_accuracy_within_prefers_the_table_and_falls_back_to_independent_branches():
    table = TokenLimitedAccuracy(tokens=[20, 100], accuracy={"majority": [[0.2, 0.6], [0.2, 0.6]]})
    model = ModelCalibration(accuracy={"majority": [0.6, 0.6], "single": [0.6]}, lengths=[20, 100],
                             max_tokens=100, accuracy_by_tokens=table)
    assert model.accuracy_within("majority", 2, 20, 100) == 0.2
    assert model.accuracy_within("majority", 2, 500, 60) == pytest.approx(0.2 + 0.4 * 40 / 80)  # max_tokens cuts
    # single is not in the table: K ~ Binomial(1, p = 1/2 of the lengths within 20 tokens)
    assert model.accuracy_within("single", 1, 20, 100) == pytest.approx(0.3)
    with pytest.raises(ValidationError):
        TokenLimitedAccuracy(tokens=[], accuracy={})
    with pytest.raises(ValidationError):  # limits must ascend
        TokenLimitedAccuracy(tokens=[100, 20], accuracy={"majority": [[0.2, 0.6]]})
    with pytest.raises(ValidationError):  # one value per limit
        TokenLimitedAccuracy(tokens=[20, 100], accuracy={"majority": [[0.2]]})


def test_calibration_from_samples_rebuilds_the_file_without_engines():
    from tts_ray.planner.calibrate import calibration_from_samples

    rows = [{"model_id": "m", **p} for p in _problems(lambda i: [20 + 40 * i] * 4)]
    calibration = calibration_from_samples(rows, dataset="d", max_tokens=100, log=lambda _: None)
    model = calibration.models["m"]
    assert (calibration.problems, calibration.samples_per_problem) == (2, 4)
    assert model.accuracy["majority"] == [1.0] * 4 and model.lengths == [20] * 4 + [60] * 4
    assert model.accuracy_within("majority", 3, 30, 100) == pytest.approx(0.5 + 0.5 * 10 / 40)
    with pytest.raises(ValueError):
        calibration_from_samples([], dataset="d", max_tokens=100)
    with pytest.raises(ValueError, match="max_tokens"):  # drawn with a larger max_tokens than given
        calibration_from_samples(rows, dataset="d", max_tokens=50, log=lambda _: None)
    short = [{**rows[0], "lengths": [20] * 3}, rows[1]]
    with pytest.raises(ValueError, match="samples"):
        accuracy_by_tokens(short, max_tokens=100)


def test_a_burst_of_requests_shrinks_each_ones_fair_share_before_the_pool_fills():
    keeper = _keeper()  # 2 replicas x 8 slots
    idle = keeper.admit("first", PlanRequest(budget_s=100, max_tokens=10, method="majority"))
    assert idle.fair_share == 16 and idle.num_branches == 16  # alone: every slot
    keeper.release("first")
    for i in range(8):  # a burst of 8 requests in flight
        keeper.admit(f"b{i}", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
    for i in range(8):
        keeper.release(f"b{i}")
    # the pool is idle again, but the burst's next request gets a share, not all 16 slots
    after = keeper.admit("next", PlanRequest(budget_s=100, max_tokens=10, method="majority"))
    assert keeper.status()["pools"]["a"]["inflight_branches"] == after.num_branches
    assert 1 <= after.fair_share < 16 and after.num_branches == after.fair_share


def test_a_stream_that_starts_again_is_sized_at_its_recent_peak_not_at_its_first_admissions():
    keeper = _keeper()
    clock, load = keeper.clock, keeper.loads["a"]

    def burst(tag):  # 8 clients start together: their admissions find 0 to 7 in flight
        for i in range(8):
            keeper.admit(f"{tag}{i}", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
            clock.now += 0.01
        for i in range(8):
            keeper.release(f"{tag}{i}")

    for round_ in range(5):  # a stream of 8 at a time, one burst a second
        burst(f"s{round_}-")
        clock.now += 1
    # the average of what the admissions found (0 to 7) lags; the stream was 7 beside each one
    keeper.admit("next", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
    assert keeper.recent_requests < 5 and load.recent_requests == 7
    keeper.release("next")
    # past the window only the average is left
    clock.now += 11
    keeper.admit("later", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
    assert load.recent_requests == pytest.approx(keeper.recent_requests) and load.recent_requests < 5


def test_requests_already_answered_do_not_count_in_flight_at_the_next_admission():
    keeper = _keeper()
    load = keeper.loads["a"]
    for i in range(8):  # a stream of 8 clients
        keeper.admit(f"s{i}", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
    # s0 is answered and its client asks again before s0's release reaches the keeper: the
    # router names s0, so 7 are in flight beside the new request, not 8
    keeper.admit("next", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1),
                 answered=["s0", "gone"])
    assert (load.cluster_active_requests, load.recent_requests) == (7, 7)
    assert load.active_requests == 9  # the ledger still books s0 until its release comes
    keeper.release("s0")
    assert load.active_requests == 8
    # without the router's word the late release counts: the peak holds 8 for the window
    keeper.admit("late", PlanRequest(budget_s=100, max_tokens=10, method="majority", branches=1))
    assert (load.cluster_active_requests, load.recent_requests) == (8, 8)


def test_the_keeper_learns_speed_from_branches_stopped_at_the_deadline_too():
    from tts_ray.methods.base import Branch
    from tts_ray.serve.budget import observations_of

    finished = Branch(text="x", answer="1", num_tokens=50, finish_reason="stop", elapsed_s=1.0)
    stopped = Branch(text="x", answer=None, num_tokens=30, finish_reason="deadline", elapsed_s=2.0)
    cancelled = Branch(text="", answer=None, num_tokens=0, finish_reason=None)
    observed = observations_of([finished, stopped, cancelled])
    assert [(o["num_tokens"], o["stopped"]) for o in observed] == [(50, False), (30, True)]
    # Short branches: one that finished in 3 tokens says little about decode speed (its time
    # is mostly queueing and prefill); one the deadline stopped at 3 tokens after 1.5 s ran
    # slow, and its band learns it (capped at 5x the profile's 0.01 s a token).
    keeper = _keeper()
    one = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)
    keeper.admit("short", one)
    keeper.release("short", [BranchObservation(num_tokens=3, elapsed_s=1.5)])
    assert keeper.loads["a"].speed_factors == {}
    keeper.admit("cut", one)
    keeper.release("cut", [BranchObservation(num_tokens=3, elapsed_s=1.5, stopped=True)])
    assert keeper.loads["a"].speed_factor_at(1) == pytest.approx(1 + 0.5 * (5.0 - 1))  # EWMA, alpha 0.5


def test_paired_early_stop_replays_the_rule_on_a_runs_own_branches():
    from tts_ray.eval.datasets import Problem
    from tts_ray.eval.stats import ProblemResult
    from tts_ray.planner.bench import paired_early_stop

    problems = [Problem(unique_id=f"p{i}", problem="q", answer="7") for i in range(3)]
    agree = ["7"] * 6  # settled after the first window: stopping saves half and loses nothing
    split = ["7", "8", "7", "8", "8", "8"]  # the first window's leader ("7") loses the full vote
    results = [
        ProblemResult(id="p0", gold="7", correct=True, latency_s=1, branch_answers=agree, branch_tokens=[10] * 6),
        ProblemResult(id="p1", gold="7", correct=False, latency_s=1, branch_answers=split, branch_tokens=[10] * 6),
        ProblemResult(id="p2", gold="7", correct=False, latency_s=1, branch_answers=["7"], branch_tokens=[10]),
    ]
    rule = {"window": 3, "confidence": 0.7, "criterion": "beta"}
    replay = paired_early_stop(results, problems, rule, branches=6, orders=4)
    assert (replay["problems"], replay["skipped"]) == (2, 1)  # p2 has too few branches
    assert replay["accuracy_full"] == 0.5  # p0 right, p1 wrong ("8" wins 4 to 2)
    # p0 stops right after 3; p1 stops only on three 8s (wrong either way), else runs all 6
    assert replay["accuracy_early"] == 0.5
    assert 0.25 <= replay["token_saving"] <= 0.5
    assert paired_early_stop(results, problems, None, branches=6) == {}


def test_the_paired_gap_interval_counts_only_problems_the_rows_answer_differently():
    from tts_ray.planner.bench import _difference_ci95_points, _paired_difference_ci95_points

    # 100 problems; both rows right on the same 50, and the best row right on 2 more.
    best = {"correct": [1] * 52 + [0] * 48, "accuracy": 0.52, "requests": 100}
    auto = {"correct": [1] * 50 + [0] * 50, "accuracy": 0.50, "requests": 100}
    low, high = _paired_difference_ci95_points(best, auto)
    # d = 1 on 2 problems, 0 elsewhere: mean 2 points, sd sqrt(0.02 * 0.98 * 100 / 99)
    half = 1.96 * math.sqrt(0.02 * 0.98 * 100 / 99 / 100) * 100
    assert (low, high) == (pytest.approx(2 - half, abs=0.01), pytest.approx(2 + half, abs=0.01))
    independent = _difference_ci95_points(best, auto)
    assert high - low < (independent[1] - independent[0]) / 4  # shared difficulty cancels
    with pytest.raises(ValueError, match="different problems"):
        _paired_difference_ci95_points(best, {"correct": [1] * 99})


def _bench_row(branches, k, right: int, problems: int = 100) -> dict:
    """A benchmark row of ``problems`` answered in order, the first ``right`` correctly."""
    return {"branches": branches, "num_speculative_tokens": k, "accuracy": right / problems,
            "requests": problems, "correct": [1] * right + [0] * (problems - right)}


def test_the_held_out_gap_picks_the_fixed_row_on_the_other_repeats():
    from tts_ray.planner.bench import summarize_budget

    # Row (4, 4) is best on the means only through its lucky first repeat; auto scores 48 twice.
    repeats = [{"fixed": [_bench_row(4, 4, 60), _bench_row(1, 4, 45)], "auto": _bench_row("auto", "auto", 48)},
               {"fixed": [_bench_row(4, 4, 40), _bench_row(1, 4, 50)], "auto": _bench_row("auto", "auto", 48)}]
    summary = summarize_budget(1.0, repeats)
    assert summary["best_fixed"] == {"branches": 4, "num_speculative_tokens": 4, "accuracy": 0.5}
    assert summary["gap_points"] == pytest.approx(2.0)  # 50 against 48 on the means
    assert summary["accuracy_by_repeat"] == {"B=4 k=4": [0.6, 0.4], "B=1 k=4": [0.45, 0.5], "auto": [0.48, 0.48]}
    # repeat 1 is judged against (1, 4), best on repeat 2 (45 - 48); repeat 2 against (4, 4),
    # best on repeat 1 (40 - 48): held out, auto is 5.5 points ahead, not 2 behind
    assert summary["heldout_choices"] == [{"branches": 1, "num_speculative_tokens": 4},
                                          {"branches": 4, "num_speculative_tokens": 4}]
    assert summary["gap_points_heldout"] == pytest.approx(-5.5)
    low, high = summary["gap_ci95_points_heldout"]
    assert low < -5.5 < high
    # one repeat: the gap of that run, no held-out figure
    single = summarize_budget(1.0, repeats[:1])
    assert single["gap_points"] == pytest.approx(12.0)
    assert single["gap_points_heldout"] is None and single["heldout_choices"] is None
    with pytest.raises(ValueError, match="different fixed"):
        summarize_budget(1.0, [repeats[0], {"fixed": repeats[1]["fixed"][::-1], "auto": repeats[1]["auto"]}])
    with pytest.raises(ValueError, match="no repeats"):
        summarize_budget(1.0, [])


def test_repeats_of_the_same_problems_count_each_problem_once_in_the_paired_interval():
    from tts_ray.planner.bench import _paired_ci95_over_repeats, _paired_difference_ci95_points

    best, auto = _bench_row(4, 4, 52), _bench_row("auto", "auto", 50)
    # the same runs twice are not twice the evidence: the interval stays as wide
    assert _paired_ci95_over_repeats([(best, auto), (best, auto)]) == _paired_difference_ci95_points(best, auto)
    # differences that cancel over the repeats on a problem leave nothing to explain
    assert _paired_ci95_over_repeats([(best, auto), (auto, best)]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="no rows"):
        _paired_ci95_over_repeats([])


def test_bench_planner_takes_as_many_repeats_as_the_seed_stride_leaves_room_for():
    from tts_ray.cli import build_parser
    from tts_ray.constants import MAX_BENCH_REPEATS
    from tts_ray.planner.bench import run_planner_bench

    parser = build_parser()
    assert parser.parse_args(["bench-planner", "--repeats", "3"]).repeats == 3
    assert parser.parse_args(["bench-planner"]).repeats == 1
    for bad in ("0", str(MAX_BENCH_REPEATS + 1)):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench-planner", "--repeats", bad])
    # refused before any request is sent (no service at this url)
    with pytest.raises(ValueError, match="repeats must be"):
        run_planner_bench("http://127.0.0.1:9", "unused.json", repeats=MAX_BENCH_REPEATS + 1)
    with pytest.raises(ValueError, match="no room"):
        run_planner_bench("http://127.0.0.1:9", "unused.json", repeats=2, seed=2**62 - 1)


def test_an_early_stopping_request_books_every_branch_but_runs_one_wave_at_a_time():
    keeper = _keeper()  # 2 replicas, 0.01 s per token at any concurrency, EWMA alpha 0.5
    keeper.admit("waves", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=16,
                                      early_stop_window=3))
    assert keeper.status()["pools"]["a"]["inflight_branches"] == 16  # slots kept for later waves
    assert keeper.admitted["waves"].concurrency == 2  # one wave of 3 over 2 replicas
    keeper.release("waves", [BranchObservation(num_tokens=100, elapsed_s=2.0)])
    # learned in the band the branches ran in (2 a replica), not in the one of 16 at once
    assert keeper.status()["pools"]["a"]["speed_factor_by_concurrency"] == {"<=2": 1.5}


def test_wave_sizes_are_the_window_then_the_rest():
    assert wave_sizes(8, 3) == [3, 3, 2]
    assert wave_sizes(6, 3) == [3, 3]
    assert wave_sizes(3, 3) == [3] and wave_sizes(2, 3) == [2]
    assert wave_sizes(16, None) == [16]


def test_the_keeper_corrects_predictions_by_the_median_of_actual_over_predicted():
    clock = FakeClock()
    keeper = _keeper(clock=clock, calibrated=True)
    merge = keeper.config.router.merge_margin_s
    plan_request = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)
    first = keeper.admit("first", plan_request)
    assert first.predicted_s == pytest.approx(1.0 + merge) and first.latency_correction == 1.0
    keeper.release("first")
    # Requests take 60% of their predicted work (no branch observations: the speed factor
    # stays 1), and 4 of 10 are cut at the deadline: those count as over, so the median is
    # the largest of the 6 fast ones.
    for i in range(10):
        keeper.admit(f"r{i}", plan_request)
        if i < 4:
            keeper.release(f"r{i}", needed_margin_s=0.05)
        else:
            keeper.release(f"r{i}", predicted_s=1.0 + merge, actual_s=merge + (0.5 if i == 4 else 0.6))
    plan = keeper.admit("p", plan_request)
    assert plan.latency_correction == pytest.approx(0.6)
    assert plan.predicted_s == pytest.approx(0.6 + merge)
    assert keeper.status()["pools"]["a"]["latency_correction"] == pytest.approx(0.6)
    # Learned against the uncorrected prediction: a request taking what is now predicted
    # (0.6 of the uncorrected work) is a ratio of 0.6 again, not 1, so nothing drifts.
    keeper.release("p", predicted_s=plan.predicted_s, actual_s=plan.predicted_s)
    assert keeper.work_ratios["a"][-1][1] == pytest.approx(0.6)
    # A majority cut pushes the median over: to the cap of 2.
    for i in range(12):
        keeper.admit(f"c{i}", plan_request)
        keeper.release(f"c{i}", needed_margin_s=0.05)
    assert keeper.admit("q", plan_request).latency_correction == 2.0
    keeper.release("q", needed_margin_s=0.05)
    # It does not decide a fixed request's admission: one branch (1 s of work uncorrected, 2 s
    # corrected) is still admitted under a 1.5 s budget, and its outcome refreshes the
    # correction. An auto request (auto_admission "fitting_plan", the default) is turned
    # away: no plan fits at the load now as plans are fitted.
    tight = keeper.admit("t", PlanRequest(budget_s=1.5, max_tokens=100, method="majority", branches=1))
    assert tight.num_branches == 1 and tight.predicted_s == pytest.approx(2.0 + merge)
    keeper.release("t", needed_margin_s=0.05)
    tight_auto = PlanRequest(budget_s=1.5, max_tokens=100, method="majority", branches=None)
    with pytest.raises(Infeasible) as info:
        keeper.admit("t2", tight_auto)
    assert info.value.predicted_s == pytest.approx(2.0 + merge)
    # Corrections expire with their requests: a minute later the profile stands alone again.
    clock.now += 61
    assert keeper.admit("s", plan_request).latency_correction == 1.0
    assert keeper.admit("s2", tight_auto).num_branches == 1  # and auto requests are admitted again


def test_the_latency_correction_can_be_turned_off():
    config = AppConfig.model_validate({
        "generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
        "router": {"latency_correction": False}})
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01])])})
    keeper = BudgetKeeper(config, prof, None, clock=FakeClock())
    plan_request = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)
    for i in range(12):
        keeper.admit(f"r{i}", plan_request)
        keeper.release(f"r{i}", needed_margin_s=0.05)
    assert keeper.admit("p", plan_request).latency_correction == 1.0


def test_the_correction_learns_only_from_predictions_of_time():
    plan_request = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)

    def fast_requests(keeper, request, count=12):
        for i in range(count):
            keeper.admit(f"r{i}", request)
            keeper.release(f"r{i}", predicted_s=1.1, actual_s=0.35)  # a quarter of the work
        return keeper.admit("next", request).latency_correction

    # uncalibrated, a branch is predicted at max_tokens: a worst case, not a time
    assert fast_requests(_keeper(), plan_request) == 1.0
    # early stopping is predicted as if no wave were saved
    waves = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=6, early_stop_window=3)
    assert fast_requests(_keeper(calibrated=True), waves) == 1.0
    assert fast_requests(_keeper(calibrated=True), plan_request) == pytest.approx(0.5)  # 0.25, capped

    # a plan already predicted over its budget was expected to be cut: its cut is not counted
    keeper = _keeper(calibrated=True)
    keeper.latency.profile = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.64])])})
    over = PlanRequest(budget_s=2, max_tokens=100, method="majority", branches=16)
    for i in range(12):
        # 16 branches at 8 a replica: 8 s predicted, admitted because one branch fits, then cut
        assert keeper.admit(f"o{i}", over).predicted_s > 2
        keeper.release(f"o{i}", needed_margin_s=0.05)
    assert keeper.work_ratios["a"] == []
    # a cut flagged by the router (a request its backstop timed out) counts as over
    for i in range(5):
        keeper.admit(f"t{i}", plan_request)
        keeper.release(f"t{i}", cut=True)
    for i in range(5):
        keeper.admit(f"f{i}", plan_request)
        keeper.release(f"f{i}", predicted_s=1.1, actual_s=0.9)
    # exactly half over: the lower median, 0.8 (the mean of the middle pair would be inf)
    assert keeper.status()["pools"]["a"]["latency_correction"] == pytest.approx(0.8)


def test_the_speed_spread_is_learned_from_recent_branches_and_fades():
    clock = FakeClock()
    keeper = _keeper(clock=clock)
    one = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)

    def branches(count, start=0):
        for i in range(start, start + count):
            keeper.admit(f"r{i}", one)
            # 100 tokens, profiled at 1 s: branches taking 0.7 s, 1 s and 2 s in turn
            keeper.release(f"r{i}", [BranchObservation(num_tokens=100, elapsed_s=(0.7, 1.0, 2.0)[i % 3])])

    branches(19)
    assert keeper.status()["pools"]["a"]["speed_spread"] == [1.0]  # too few branches yet
    branches(11, start=19)
    spread = keeper.status()["pools"]["a"]["speed_spread"]
    assert len(spread) == 5 and spread == sorted(spread) and spread[2] == 1.0
    assert spread[0] < 0.8 and spread[-1] > 1.5  # the 0.7 s and 2 s branches, about the median
    assert keeper.admit("p", one) and keeper.loads["a"].speed_spread == tuple(spread)  # what plans read
    clock.now += 61  # a minute without branches: the prediction alone again
    assert keeper.status()["pools"]["a"]["speed_spread"] == [1.0]
    # One request whose 20 branches all ran twice as slow as planned: no spread about their
    # median. Each is measured against the factor the plan used, not the band's factor that
    # the request's earlier branches have already moved towards 2 (which read a spread into it).
    keeper.admit("wide", PlanRequest(budget_s=60, max_tokens=100, method="majority", branches=20))
    keeper.release("wide", [BranchObservation(num_tokens=100, elapsed_s=2.0)] * 20)
    assert keeper.status()["pools"]["a"]["speed_spread"] == [1.0] * 5

    off = AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
                                    "router": {"plan_for_speed_spread": False}})
    keeper = BudgetKeeper(off, keeper.latency.profile, None, clock=FakeClock())
    branches(30)
    assert keeper.status()["pools"]["a"]["speed_spread"] == [1.0]


def test_the_keeper_follows_the_progress_of_the_requests_in_flight_as_the_load_changes():
    clock = FakeClock()
    config = AppConfig.model_validate({"generators": [
        {"name": "a", "model_id": "m", "model_source": "x", "max_ongoing_requests": 8}],
        "router": {"merge_margin_s": 0.0, "plan_for_inflight": True}})
    # 0.01 s a token alone, twice that at 2 sequences (linear to 64)
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.64],
                   prefill_s=0.0)])})
    keeper = BudgetKeeper(config, prof, None, clock=clock)
    one = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=1)
    first = keeper.admit("r1", one)
    assert first.seconds_per_token == pytest.approx(0.01) and first.deadline_tokens == pytest.approx(1000)
    clock.now += 2  # 200 tokens alone
    keeper.admit("r2", one)
    # beside r2 it decodes at 0.02 s a token: 200 + 8 s / 0.02 by its deadline
    (view_r1, view_r2) = keeper._inflight()
    assert (view_r1.seconds_per_token, view_r1.deadline_tokens, view_r1.window_s) == \
        (pytest.approx(0.02), pytest.approx(600), pytest.approx(8))
    assert view_r2.deadline_tokens == pytest.approx(10 / 0.02)
    clock.now += 2  # 100 more tokens beside r2, which then ends: alone again for the last 6 s
    keeper.release("r2")
    (view_r1,) = keeper._inflight()
    assert (view_r1.seconds_per_token, view_r1.deadline_tokens) == (pytest.approx(0.01), pytest.approx(900))
    clock.now += 7  # past its deadline: nothing left to slow down
    assert keeper._inflight() == []


def test_the_keeper_hands_the_requests_in_flight_to_auto_plans():
    keeper = _keeper(calibrated=True)
    assert not keeper.weigh_inflight  # off by default
    keeper.weigh_inflight = keeper.planner.weigh_inflight = True
    fixed = PlanRequest(budget_s=10, max_tokens=100, method="majority", branches=2)
    auto = PlanRequest(budget_s=10, max_tokens=100)
    assert keeper.admit("first", auto).harm_to_inflight is None  # nothing in flight yet
    keeper.admit("fixed", fixed)
    assert keeper.admit("auto", auto).harm_to_inflight == 0.0  # flat curve: costs them nothing
    off = AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
                                    "router": {"plan_for_inflight": False}})
    keeper = BudgetKeeper(off, keeper.latency.profile, keeper.latency.calibration, clock=FakeClock())
    keeper.admit("fixed", fixed)
    assert keeper.admit("auto", auto).harm_to_inflight is None


def test_auto_admission_by_fit_reaches_the_planner_only_when_configured():
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.64],
                   prefill_s=0.0)])})
    for setting, strict in (("fitting_plan", True), ("one_branch", False)):
        config = AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
                                           "router": {"auto_admission": setting}})
        assert BudgetKeeper(config, prof, None).planner.admit_auto_if_fits is strict
    default = AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x"}]})
    assert default.router.auto_admission == "fitting_plan"
    with pytest.raises(ValueError):
        AppConfig.model_validate({"generators": [{"name": "a", "model_id": "m", "model_source": "x"}],
                                  "router": {"auto_admission": "always"}})


def test_auto_ranking_and_load_reach_the_planner_only_when_configured():
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.64],
                   prefill_s=0.0)])})
    generators = [{"name": "a", "model_id": "m", "model_source": "x"}]
    # (config field, its default, the setting that turns the planner's flag on, the flag, a typo)
    cases = (("auto_ranking", "fit_first", "expected_accuracy", "rank_by_accuracy", "accuracy"),
             ("auto_ranking", "fit_first", "steady_state", "steady_state", "steady"),
             ("auto_ranking", "fit_first", "steady_split", "split_stream", "split"),
             ("auto_load", "arriving", "symmetric", "symmetric_load", "steady"))
    for field, default, on, flag, typo in cases:
        for setting in (on, default):
            config = AppConfig.model_validate({"generators": generators, "router": {field: setting}})
            assert getattr(BudgetKeeper(config, prof, None).planner, flag) is (setting == on)
        assert getattr(AppConfig.model_validate({"generators": generators}).router, field) == default
        with pytest.raises(ValueError):
            AppConfig.model_validate({"generators": generators, "router": {field: typo}})


def test_plans_chosen_knowing_the_deadline_cuts_them_teach_the_correction_nothing():
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[
        SpeedCurve(num_speculative_tokens=0, concurrency=[1, 64], seconds_per_token=[0.01, 0.01],
                   prefill_s=0.0)])})
    # half the branches take 50 tokens, half 150; every vote gains
    calibration = Calibration(dataset="s", problems=1, samples_per_problem=8, temperature=0.7, models={
        "m": ModelCalibration(accuracy={"majority": [0.4 + 0.05 * b for b in range(8)], "single": [0.4]},
                              lengths=[50] * 50 + [150] * 50, max_tokens=200)})

    def keeper_ranking(setting):
        clock = FakeClock()
        config = AppConfig.model_validate({
            "generators": [{"name": "a", "model_id": "m", "model_source": "x", "max_ongoing_requests": 8}],
            "router": {"auto_ranking": setting, "adaptive_merge_margin": False}})
        keeper = BudgetKeeper(config, prof, calibration, clock=clock)
        # recent branches ran at 1 to 1.5x the predicted seconds per token: the slow end is 1.5
        keeper.speed_residuals["a"] = [(clock.now, 1.0)] * 20 + [(clock.now, 1.5)] * 10
        return keeper

    # 1.65 s: one branch of the typical 100 tokens fits at the slow end (1.5 s + the 0.1 s merge
    # margin); two or more branches fit at the predicted speed (8: 150 tokens, 1.6 s) but not at
    # the slow end, so the accuracy ranking runs them knowing the deadline may cut them
    auto = PlanRequest(budget_s=1.65, max_tokens=200, method="majority", branches=None)
    fit_first, by_accuracy = keeper_ranking("fit_first"), keeper_ranking("expected_accuracy")
    for i in range(10):
        first = fit_first.admit(f"f{i}", auto)
        assert first.num_branches == 1 and not first.expected_cut
        fit_first.release(f"f{i}", needed_margin_s=0.05)  # the long problems are cut
        ranked = by_accuracy.admit(f"r{i}", auto)
        assert ranked.num_branches > 1 and ranked.expected_cut and ranked.predicted_s <= 1.65
        by_accuracy.release(f"r{i}", needed_margin_s=0.05)
    # Fit first, the cuts of a plan expected to fit count as over: the correction goes to its
    # cap and the next auto request is turned away (auto_admission "fitting_plan"). By accuracy
    # nothing is learned, and the next one is planned as before.
    assert [r for _, r in fit_first.work_ratios["a"]] == [math.inf] * 10
    with pytest.raises(Infeasible):
        fit_first.admit("next", auto)
    assert by_accuracy.work_ratios["a"] == []
    assert by_accuracy.admit("next", auto).latency_correction == 1.0


def test_a_burst_s_first_branches_teach_the_speed_of_the_concurrency_they_ran_at():
    config = AppConfig.model_validate({"generators": [
        {"name": "a", "model_id": "m", "model_source": "x", "max_ongoing_requests": 64}]})
    # compute-bound beyond 4 sequences: each one's seconds per token grow with the batch
    prof = ClusterProfile(device="x", pools={"a": PoolProfile(model_id="m", curves=[SpeedCurve(
        num_speculative_tokens=0, concurrency=[1, 4, 32], seconds_per_token=[0.01, 0.01, 0.04], prefill_s=0.0)])})
    keeper = BudgetKeeper(config, prof, None, ewma_alpha=0.5, clock=FakeClock())
    request = PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=4)
    for i in range(8):  # 8 clients start together: the first is admitted alone, the last among 32
        keeper.admit(f"r{i}", request)
    assert [keeper.admitted[f"r{i}"].concurrency for i in (0, 7)] == [4, 32]
    keeper.clock.now += 4.0  # every branch decodes 100 tokens at the profile's speed among 32
    for i in range(8):
        keeper.release(f"r{i}", [BranchObservation(num_tokens=100, elapsed_s=4.0)] * 4)
    # Compared with the profile at their admission, the first requests' branches ran 4 and 2
    # times slow, and bands 2 to 4 would have learned it; they ran among 32, at its speed.
    assert keeper.status()["pools"]["a"]["speed_factor_by_concurrency"] == {"<=32": 1.0}
    # The plans' own error stays in the spread: the first one was predicted 4x too fast.
    assert max(r for _, r in keeper.speed_residuals["a"]) == pytest.approx(4.0)


def test_an_early_stopping_request_teaches_the_band_of_the_window_it_runs_not_of_its_booking():
    keeper = _keeper()  # 2 replicas, flat 0.01 s per token
    keeper.admit("es", PlanRequest(budget_s=100, max_tokens=100, method="majority", branches=12,
                                   early_stop_window=4))
    assert keeper.status()["pools"]["a"]["inflight_branches"] == 12  # every wave's slots booked
    keeper.clock.now += 2.0
    keeper.release("es", [BranchObservation(num_tokens=100, elapsed_s=2.0)])  # 2x the profile
    # 4 branches running (2 a replica): band <=2, not the booked 12's (6 a replica, band <=8)
    assert keeper.status()["pools"]["a"]["speed_factor_by_concurrency"] == {"<=2": 1.5}
