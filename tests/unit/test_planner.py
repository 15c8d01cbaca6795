"""The planner on synthetic profiles: pool (k) choice, branch growth, budgets, 429, fairness."""

import itertools

import pytest

from tts_ray.planner.calibration import Calibration, ModelCalibration
from tts_ray.planner.latency import LatencyModel, PoolLoad
from tts_ray.planner.planner import Infeasible, InFlight, Planner, PlanRequest, slowdown, tokens_lost
from tts_ray.planner.profile import ClusterProfile, PoolProfile, SpeedCurve

CONCURRENCY = [1, 2, 4, 8, 16, 32, 64]


def curve(k, spt_ms, tokens_per_step=1.0, prefill_s=0.01):
    return SpeedCurve(num_speculative_tokens=k, concurrency=CONCURRENCY,
                      seconds_per_token=[s / 1000 for s in spt_ms], tokens_per_step=tokens_per_step,
                      prefill_s=prefill_s)


# Memory-bound until 16 sequences, then compute-bound (the paper's shape).
FLAT_THEN_STEEP = [10, 10, 10, 10.2, 10.5, 20, 40]
# Speculation: 3x faster alone, but its extra compute makes it slower from 16 sequences on.
SPEC_PAYS_SMALL = [3.3, 3.4, 3.6, 5, 12, 30, 70]
SPEC_NEVER_PAYS = [12, 12, 12, 12.5, 13, 25, 50]


def setup(spec_ms, lengths=(100,), accuracy=None):
    profile = ClusterProfile(device="synthetic", pools={
        "spec": PoolProfile(model_id="m", num_speculative_tokens=4, curves=[curve(4, spec_ms, 3.0)]),
        "plain": PoolProfile(model_id="m", num_speculative_tokens=0, curves=[curve(0, FLAT_THEN_STEEP)]),
    })
    accuracy = accuracy or {"majority": [0.4 + 0.35 * (1 - 0.8 ** b) for b in range(1, 33)],
                            "single": [0.4]}
    calibration = Calibration(dataset="synthetic", problems=1, samples_per_problem=32, temperature=0.7,
                              models={"m": ModelCalibration(accuracy=accuracy, lengths=list(lengths),
                                                            max_tokens=200)})
    planner = Planner(LatencyModel(profile, calibration, merge_margin_s=0.05))
    loads = {"spec": PoolLoad("m", 4, replicas=1, slots_per_replica=64),
             "plain": PoolLoad("m", 0, replicas=1, slots_per_replica=64)}
    return planner, loads


def request(budget_s, **kw):
    kw.setdefault("scored_available", False)
    return PlanRequest(budget_s=budget_s, max_tokens=200, **kw)


def test_picks_k0_when_speculation_does_not_pay():
    planner, loads = setup(SPEC_NEVER_PAYS)
    plan = planner.plan(request(5.0, method="majority", branches=4), loads)
    assert plan.pool == "plain" and plan.num_speculative_tokens == 0


def test_picks_speculation_for_few_branches_and_k0_for_many():
    planner, loads = setup(SPEC_PAYS_SMALL)
    few = planner.plan(request(5.0, method="majority", branches=1), loads)
    many = planner.plan(request(5.0, method="majority", branches=32), loads)
    assert few.pool == "spec"
    assert many.pool == "plain"


def test_grows_branches_while_the_curve_is_flat_and_stops_where_it_turns():
    planner, loads = setup(SPEC_NEVER_PAYS)
    # 16 branches: 10 ms prefill + 100 tokens x 10.5 ms + 50 ms merge = 1.11 s; the 17th
    # sequence is past the knee (1.17 s).
    plan = planner.plan(request(1.12, method="majority"), loads)
    assert plan.num_branches == 16
    assert plan.predicted_s <= 1.12
    loose = planner.plan(request(3.0, method="majority"), loads)
    assert loose.num_branches > 16


def test_respects_every_budget_and_spends_more_as_budgets_loosen():
    planner, loads = setup(SPEC_PAYS_SMALL)
    chosen = []
    for budget_s in (0.5, 1.0, 1.5, 2.5, 5.0):
        plan = planner.plan(request(budget_s), loads)
        assert plan.predicted_s <= budget_s
        chosen.append(plan.expected_accuracy)
    assert chosen == sorted(chosen)
    assert chosen[-1] > chosen[0]


def test_infeasible_budget_raises_with_a_retry_hint():
    planner, loads = setup(SPEC_PAYS_SMALL)
    with pytest.raises(Infeasible) as info:
        planner.plan(request(0.2), loads)  # one branch needs ~0.36 s
    assert info.value.retry_after_s >= 1
    assert info.value.predicted_s > 0.2
    # A fixed B > 1 that does not fit is still run (the deadline merges what finished) as
    # long as one branch would fit.
    plan = planner.plan(request(0.5, method="majority", branches=64), loads)
    assert plan.num_branches == 64 and plan.predicted_s > 0.5


def test_load_on_a_pool_shrinks_the_plan():
    planner, loads = setup(SPEC_NEVER_PAYS)
    idle = planner.plan(request(3.0, method="majority"), loads)
    for load in loads.values():
        load.inflight_branches, load.active_requests = 40, 4
    busy = planner.plan(request(3.0, method="majority"), loads)
    assert busy.num_branches < idle.num_branches


def test_a_full_pool_is_shared_equally_among_its_requests():
    planner, loads = setup(SPEC_NEVER_PAYS)
    for load in loads.values():
        load.inflight_branches, load.active_requests = 64, 4
    # The budget is loose enough that latency does not bind: the fair share (64 slots among
    # 5 requests) does.
    plan = planner.plan(request(10.0, method="majority"), loads)
    assert plan.num_branches == 64 // 5 == plan.fair_share


def test_an_auto_plan_in_a_burst_leaves_time_for_the_requests_behind_it():
    planner, loads = setup(SPEC_NEVER_PAYS)
    alone = planner.plan(request(1.5, method="majority"), loads)
    assert alone.num_branches == 22  # alone: up to 1.41 s of decoding at 22 sequences
    for load in loads.values():
        load.recent_requests = 7.0  # a burst of 8: the pool is idle, but 7 more are coming
    burst = planner.plan(request(1.5, method="majority"), loads)
    # Planned as if all 8 ran the same plan: 8 x B sequences must stay on the flat part
    # (16 at most); the fair share alone (64 // 8 = 8) would have allowed 8 each.
    assert burst.fair_share == 8 and burst.num_branches == 2
    # It was chosen on the burst's 16 sequences, but the reported prediction (the one its
    # error is measured on) is at the load in flight now: the idle pool, 2 sequences.
    assert burst.predicted_parts_s["decode"] == pytest.approx(100 * 0.01)
    assert burst.planned_s - burst.predicted_s == pytest.approx(100 * (0.0105 - 0.01))
    assert alone.planned_s is None  # nobody expected: the two are the same


def test_requests_already_admitted_keep_their_branches_in_the_prediction():
    planner, loads = setup(SPEC_NEVER_PAYS)
    for load in loads.values():  # 8 one-branch requests in flight on each pool, as many as lately
        load.inflight_branches = load.active_requests = 8
        load.recent_requests, load.cluster_active_requests = 16.0, 16
    plan = planner.plan(request(1.5, method="majority"), loads)
    # Nobody else is expected: the fair share (64 slots among 17 requests) allows 3, and
    # 8 in flight + 3 stays on the flat part. Sized as if the 16 in flight ran B each, 3
    # branches would be predicted at 16 x 3 + 3 = 51 sequences, on the steep part.
    assert plan.fair_share == 64 // 17 == plan.num_branches
    # plain pool at 11 sequences (8 in flight + its 3): 10.2 ms at 8, 10.5 at 16, interpolated
    assert plan.pool == "plain" and plan.predicted_parts_s["decode"] == pytest.approx(100 * 0.0103125)


def test_symmetric_load_sizes_a_plan_as_if_the_requests_in_flight_ran_it_too():
    planner, loads = setup(SPEC_NEVER_PAYS)
    for load in loads.values():  # as above: 8 one-branch requests in flight on each pool
        load.inflight_branches = load.active_requests = 8
        load.recent_requests, load.cluster_active_requests = 16.0, 16
    arriving = planner.plan(request(1.5, method="majority"), loads)
    planner.symmetric_load = True
    symmetric = planner.plan(request(1.5, method="majority"), loads)
    # 16 requests lately, each at B on this pool: 2 branches would decode at 16 x 2 + 2 = 34
    # sequences (past the knee at 16: 20 ms a token, 2 s for 100 tokens); one branch at 17
    # sequences (10.5 ms at 16, 20 at 32: 11.09 ms interpolated) fits 1.5 s.
    assert arriving.num_branches == 3 and symmetric.num_branches == 1
    assert symmetric.planned_s == pytest.approx(0.01 + 100 * 0.0110938 + 0.05, abs=1e-4)
    # The load is never below what the arriving requests alone bring: in a burst onto an idle
    # pool (nothing in flight, 7 coming) both count 7 x B others.
    idle = PoolLoad("m", 0, replicas=1, slots_per_replica=64, recent_requests=7.0)
    assert Planner._planning_load(idle, 3, symmetric=True).inflight_branches == 21
    assert Planner._planning_load(idle, 3).inflight_branches == 21
    # Fixed B is kept whatever the load.
    assert planner.plan(request(1.5, method="majority", branches=4), loads).num_branches == 4


def test_a_burst_too_large_for_one_branch_each_still_gets_one_branch_not_429():
    planner, loads = setup(SPEC_NEVER_PAYS)
    for load in loads.values():
        load.recent_requests = 63.0  # 64 sequences would take 4 s; the idle pool takes 1 s
    plan = planner.plan(request(1.5, method="majority"), loads)
    assert plan.num_branches == 1
    for load in loads.values():
        load.inflight_branches, load.active_requests = 64, 63
    with pytest.raises(Infeasible):  # now the load is real: one branch cannot make it
        planner.plan(request(1.5, method="majority"), loads)


def test_auto_admission_by_fit_turns_away_an_auto_request_no_plan_fits_now():
    planner, loads = setup(SPEC_NEVER_PAYS)
    strict = Planner(planner.latency, admit_auto_if_fits=True)
    for load in loads.values():  # 8 one-branch requests in flight on each pool, as many as lately
        load.inflight_branches = load.active_requests = 8
        load.recent_requests = 8.0
        load.latency_correction = 1.5  # recent requests took half as long again as predicted
    # One branch on plain, 9 sequences: 10 ms prefill + 100 x 10.24 ms + 50 ms merge = 1.08 s
    # uncorrected, so the one-branch test admits it; corrected, (0.01 + 1.024) x 1.5 + 0.05 = 1.60 s.
    lenient = planner.plan(request(1.5, method="majority"), loads)
    assert lenient.num_branches == 1 and lenient.predicted_s > 1.5  # the quickest plan, expected to be cut
    with pytest.raises(Infeasible) as info:
        strict.plan(request(1.5, method="majority"), loads)
    assert info.value.predicted_s == pytest.approx((0.01 + 100 * 0.0102375) * 1.5 + 0.05)
    assert info.value.retry_after_s == 1
    # A fixed request is admitted as before: the rule is for what the planner chooses.
    assert strict.plan(request(1.5, method="majority", branches=1), loads).num_branches == 1
    # The slow end of the speed spread turns it away as well: 1.02 s of decoding at 1.5x.
    for load in loads.values():
        load.latency_correction, load.speed_spread = 1.0, (0.8, 0.9, 1.0, 1.1, 1.5)
    with pytest.raises(Infeasible):
        strict.plan(request(1.5, method="majority"), loads)
    assert strict.plan(request(1.6, method="majority"), loads).num_branches == 1  # 1.08 + 0.51 s fits
    # A burst on idle pools is sized as if it came, but admitted on the load now.
    for load in loads.values():
        load.inflight_branches = load.active_requests = 0
        load.speed_spread, load.recent_requests = (1.0,), 63.0
    assert strict.plan(request(1.5, method="majority"), loads).num_branches == 1


def test_learned_speed_bands_never_make_more_branches_look_quicker():
    from tts_ray.planner.latency import live_seconds_per_token

    planner, loads = setup(SPEC_NEVER_PAYS)
    # Factors as a run learned them: slow in the 5-8 band, about the profile in 9-16.
    for load in loads.values():
        load.speed_factors = {3: 3.0, 4: 1.0}
        load.recent_requests = 7.0  # a burst: B branches each for 8 requests
    curve = planner.latency.profile.pools["plain"].curve(0)
    spt = [live_seconds_per_token(curve, loads["plain"], c) for c in range(1, 65)]
    assert all(later >= earlier for earlier, later in itertools.pairwise(spt))
    assert spt[8] == pytest.approx(spt[7]) == pytest.approx(0.0102 * 3.0)  # 9 sequences: no faster than 8
    assert spt[1] == pytest.approx(0.010)  # two bands below the slow one: the profile, unchanged
    # a profile that dips between its points, inside one band (5-8): no quicker than at 3
    from tts_ray.planner.profile import SpeedCurve
    dipping = SpeedCurve(num_speculative_tokens=0, concurrency=[1, 3, 5, 64],
                         seconds_per_token=[0.010, 0.012, 0.009, 0.020], tokens_per_step=1.0, prefill_s=0.0)
    assert live_seconds_per_token(dipping, PoolLoad("m", 0, replicas=1, slots_per_replica=64), 5) \
        == pytest.approx(0.012)
    # One branch alone fits 1.5 s (admitted), but nothing fits at 8 x B sequences: the quickest
    # plan is one branch. Read raw, the 9-16 band made 2 branches each (16 sequences, 10.5 ms a
    # token: 1.1 s) look quicker than 1 (8 sequences, 30.6 ms: 3.1 s), and the planner chose them.
    plan = planner.plan(request(1.5, method="majority"), loads)
    assert plan.num_branches == 1 and plan.planned_s > 1.5


def test_a_spread_of_speeds_prefers_a_plan_with_room_to_spare():
    planner, loads = setup(SPEC_NEVER_PAYS)  # every branch is 100 tokens: finished or not
    at_prediction = planner.plan(request(2.0, method="majority"), loads)
    for load in loads.values():
        load.speed_spread = (0.8, 0.9, 1.0, 1.1, 1.5)  # a fifth of the draws decode 1.5x slower
    spread = planner.plan(request(2.0, method="majority"), loads)
    # At the prediction: the most branches whose 100 tokens just fit. They would finish in only
    # 4 of the 5 draws; fewer branches leave room for 150 tokens, finish in all five and vote
    # at full accuracy.
    assert spread.num_branches < at_prediction.num_branches
    assert at_prediction.planned_s is None and at_prediction.predicted_parts_s["decode"] > 2.0 / 1.5
    # and it fits even at the spread's slow end: 1.5x the predicted decoding
    assert spread.predicted_s + 0.5 * spread.predicted_parts_s["decode"] <= 2.0
    expected = 0.4 + 0.35 * (1 - 0.8 ** spread.num_branches)
    assert spread.expected_accuracy == pytest.approx(expected)  # every draw finishes
    assert spread.expected_accuracy > 0.8 * at_prediction.expected_accuracy


def test_accuracy_over_the_speed_spread_is_the_mean_of_its_draws():
    planner, loads = setup(SPEC_NEVER_PAYS, lengths=(50, 100, 150, 200))
    load = loads["plain"]
    at = [planner._accuracy("m", "majority", 4, tokens, 200) for tokens in (200, 100, 50)]
    assert at[0] > at[1] > at[2]  # fewer tokens left, more branches cut
    load.speed_spread = (0.5, 1.0, 2.0)  # the deadline leaves 200, 100 and 50 tokens
    assert planner._accuracy_over_spread(load, "majority", 4, 100, 200) == pytest.approx(sum(at) / 3)
    load.speed_spread = (1.0,)
    assert planner._accuracy_over_spread(load, "majority", 4, 100, 200) == pytest.approx(at[1])


def test_a_plan_must_fit_at_the_slow_end_of_the_speed_spread():
    # Accuracy grows with every branch: averaged over the spread, 4 of 5 draws at the most
    # branches that fit the median speed would still beat fewer branches that always finish.
    linear = {"majority": [0.02 * b for b in range(1, 65)], "single": [0.02]}
    planner, loads = setup(SPEC_NEVER_PAYS, accuracy=linear)
    at_prediction = planner.plan(request(2.0, method="majority"), loads)
    for load in loads.values():
        load.speed_spread = (0.8, 0.9, 1.0, 1.1, 1.5)
    plan = planner.plan(request(2.0, method="majority"), loads)
    assert at_prediction.predicted_s + 0.5 * at_prediction.predicted_parts_s["decode"] > 2.0
    assert plan.predicted_s + 0.5 * plan.predicted_parts_s["decode"] <= 2.0
    assert plan.num_branches < at_prediction.num_branches


def test_extra_branches_buy_no_insurance_when_lengths_are_set_by_the_problem():
    from tts_ray.planner.calibration import TokenLimitedAccuracy

    # Half the problems take 40 tokens, half 160; voting adds nothing (0.5 at every B), so only
    # the chance that some branch beats the deadline could make more branches worth it.
    def planner_with(table):
        profile = ClusterProfile(device="synthetic", pools={
            "plain": PoolProfile(model_id="m", num_speculative_tokens=0, curves=[curve(0, FLAT_THEN_STEEP)])})
        model = ModelCalibration(accuracy={"majority": [0.5] * 16, "single": [0.5]}, lengths=[40] * 50 + [160] * 50,
                                 max_tokens=200, accuracy_by_tokens=table)
        calibration = Calibration(dataset="s", problems=2, samples_per_problem=16, temperature=0.7, models={"m": model})
        return Planner(LatencyModel(profile, calibration, merge_margin_s=0.05))

    loads = {"plain": PoolLoad("m", 0, replicas=1, slots_per_replica=64)}
    # 1.44 s of decoding at 10 ms a token: 144 tokens, so the deadline cuts the 160-token problems
    # (the expected longest branch fits up to B = 2: 100 tokens at B = 1, 130 at 2, 145 at 3)
    ask = request(1.5, method="majority")
    # Independent branches (no table): every extra branch is another chance to finish in time.
    independent = planner_with(None).plan(ask, loads)
    # Measured per problem: a long problem's branches are all long, so more branches change nothing.
    per_problem = TokenLimitedAccuracy(tokens=[40, 160, 200], accuracy={"majority": [[0.25, 0.5, 0.5]] * 16})
    measured = planner_with(per_problem).plan(ask, loads)
    assert independent.num_branches == 2 and independent.expected_accuracy == pytest.approx(0.375)
    assert measured.num_branches == 1
    assert measured.expected_accuracy == pytest.approx(0.25 + 0.25 * (144 - 40) / (160 - 40))


def short_and_long_problems():
    """Half the problems take 50 tokens a branch, half 150, on one plain pool: a deadline
    between the two loses the long problems whatever B is, and the short ones still gain from
    voting. Returns (majority accuracy per B, the latency model)."""
    from tts_ray.planner.calibration import TokenLimitedAccuracy

    majority = [0.4 + 0.35 * (1 - 0.8 ** b) for b in range(1, 17)]
    table = TokenLimitedAccuracy(tokens=[50, 150, 200], accuracy={"majority": [[a / 2, a, a] for a in majority]})
    model = ModelCalibration(accuracy={"majority": majority, "single": [0.4]}, lengths=[50] * 50 + [150] * 50,
                             max_tokens=200, accuracy_by_tokens=table)
    calibration = Calibration(dataset="s", problems=2, samples_per_problem=16, temperature=0.7, models={"m": model})
    profile = ClusterProfile(device="synthetic", pools={
        "plain": PoolProfile(model_id="m", num_speculative_tokens=0, curves=[curve(0, FLAT_THEN_STEEP)])})
    return majority, LatencyModel(profile, calibration, merge_margin_s=0.05)


def test_ranking_by_expected_accuracy_runs_plans_the_deadline_is_expected_to_cut():
    majority, latency = short_and_long_problems()
    loads = {"plain": PoolLoad("m", 0, replicas=1, slots_per_replica=64)}
    ask = request(1.3, method="majority")
    # Fit first: one branch (10 ms prefill + 100 tokens expected x 10 ms + 50 ms merge = 1.06 s)
    # is the only plan whose expected longest branch fits 1.3 s; 2 branches expect 125 tokens.
    fit_first = Planner(latency).plan(ask, loads)
    assert fit_first.num_branches == 1 and fit_first.predicted_s <= 1.3
    # By accuracy: 1.24 s leaves a branch 118 tokens at 16 sequences (10.5 ms), enough for the
    # short problems, which 16 branches vote on; past the knee at 16 the branches would decode
    # so much slower that the table gives less (20 branches: 12.5 ms, 99 tokens). A typical
    # branch (100 tokens, 1.05 s + 60 ms) still finishes.
    ranked = Planner(latency, rank_by_accuracy=True).plan(ask, loads)
    assert ranked.num_branches == 16 and ranked.predicted_s > 1.3
    assert ranked.expected_cut and not fit_first.expected_cut
    assert ranked.expected_accuracy == pytest.approx(majority[15] * (0.5 + 0.5 * (1.24 / 0.0105 - 50) / 100))
    assert ranked.expected_accuracy > fit_first.expected_accuracy + 0.2
    # Guarded by the typical branch: at 1.08 s one branch of the expected 100 tokens must still
    # finish. 8 sequences decode at 10.2 ms (1.02 s + 60 ms), 9 at 10.24 ms: 8 branches at most,
    # though the table would still give 16 more (as at 1.3 s).
    guarded = Planner(latency, rank_by_accuracy=True).plan(request(1.08, method="majority"), loads)
    assert guarded.num_branches == 8 and guarded.seconds_per_token == pytest.approx(0.0102)
    # A fixed B is kept: the ranking is for what the planner chooses.
    assert Planner(latency, rank_by_accuracy=True).plan(request(1.3, method="majority", branches=2),
                                                        loads).num_branches == 2
    # Uncalibrated, there is no expected accuracy to rank by: the fit comes first as before
    # (every branch expected at max_tokens, 200: 17 branches fit 2.3 s, 2.28 s, as without it).
    uncalibrated = LatencyModel(latency.profile, None, merge_margin_s=0.05)
    plain = Planner(uncalibrated).plan(request(2.3, method="majority"), loads)
    assert plain.num_branches == 17
    assert Planner(uncalibrated, rank_by_accuracy=True).plan(request(2.3, method="majority"),
                                                             loads).num_branches == 17


def test_auto_method_uses_the_calibration_and_scored_methods_only_with_a_reward_model():
    accuracy = {"majority": [0.4, 0.5, 0.55, 0.6], "weighted_majority": [0.4, 0.6, 0.7, 0.8],
                "best_of_n": [0.4, 0.55, 0.6, 0.65], "single": [0.4]}
    planner, loads = setup(SPEC_NEVER_PAYS, accuracy=accuracy)
    no_reward = planner.plan(request(5.0), loads)
    assert no_reward.method == "majority"
    with_reward = planner.plan(request(5.0, scored_available=True), loads)
    assert with_reward.method == "weighted_majority"
    assert with_reward.expected_accuracy == pytest.approx(0.8)


def test_model_filter_and_unknown_model():
    planner, loads = setup(SPEC_NEVER_PAYS)
    loads["small"] = PoolLoad("tiny", 0, replicas=1, slots_per_replica=8)
    plan = planner.plan(request(5.0, model_id="m"), loads)
    assert plan.model_id == "m"
    with pytest.raises(ValueError):
        planner.plan(request(5.0, model_id="nope"), loads)


def test_without_a_profile_the_defaults_run_on_the_least_loaded_pool():
    planner = Planner(None)
    loads = {"a": PoolLoad("m", 4, replicas=1, slots_per_replica=8, inflight_branches=5),
             "b": PoolLoad("m", 0, replicas=1, slots_per_replica=8, inflight_branches=1)}
    plan = planner.plan(PlanRequest(budget_s=0.01, max_tokens=10, default_method="majority",
                                    default_branches=8), loads)
    assert (plan.pool, plan.method, plan.num_branches, plan.predicted_s) == ("b", "majority", 8, None)


def test_a_requested_draft_length_pins_the_pool():
    planner, loads = setup(SPEC_PAYS_SMALL)
    assert planner.plan(request(5.0, method="majority", branches=1, num_speculative_tokens=0),
                        loads).pool == "plain"
    assert planner.plan(request(5.0, method="majority", branches=32, num_speculative_tokens=4),
                        loads).pool == "spec"
    with pytest.raises(ValueError):
        planner.plan(request(5.0, num_speculative_tokens=2), loads)


def test_extra_branches_insure_against_the_length_tail():
    # Half the branches need 50 tokens, half 150; voting adds nothing (flat curve). At 1.5 s a
    # branch gets 144 tokens before the deadline: each finishes with p = 0.5, so extra
    # branches pay as insurance (P(none finishes) = 0.5^B) as long as their expected longest
    # branch (150 - 100 / 2^B tokens) still fits: B = 4 (1.4975 s), not 5 (1.53 s). Ranking by
    # calibrated accuracy alone would tie and take the quickest, B = 1.
    flat = {"majority": [0.5] * 32, "single": [0.5]}
    planner, loads = setup(SPEC_NEVER_PAYS, lengths=[50] * 5 + [150] * 5, accuracy=flat)
    plan = planner.plan(request(1.5, method="majority"), loads)
    assert plan.pool == "plain" and plan.num_branches == 4 and plan.predicted_s <= 1.5
    assert plan.branch_finish_probability == pytest.approx(0.5)
    assert plan.expected_accuracy == pytest.approx(0.5 * (1 - 0.5 ** 4))
    # with B fixed to 1, the same request's expected accuracy is the lone branch's chance
    single = planner.plan(request(1.5, method="majority", branches=1), loads)
    assert single.expected_accuracy == pytest.approx(0.25)


def test_the_pool_more_likely_to_finish_wins_a_lone_branch():
    # Speculation 3x faster alone: a lone branch of 150 tokens finishes there within 1.2 s,
    # not on the plain pool.
    planner, loads = setup(SPEC_PAYS_SMALL, lengths=[50] * 5 + [150] * 5)
    plan = planner.plan(request(1.2, method="majority", branches=1), loads)
    assert plan.pool == "spec" and plan.branch_finish_probability == 1.0


def test_early_stopping_waves_are_predicted_one_after_another():
    from tts_ray.planner.latency import LatencyModel

    profile = ClusterProfile(device="synthetic", pools={
        "plain": PoolProfile(model_id="m", num_speculative_tokens=0, curves=[curve(0, FLAT_THEN_STEEP, prefill_s=0.02)])})
    model = LatencyModel(profile, None, merge_margin_s=0.05)  # uncalibrated: every branch takes max_tokens
    load = PoolLoad("m", 0, replicas=1, slots_per_replica=64)
    together = model.predict("plain", load, "majority", 8, 100)
    waves = model.predict("plain", load, "majority", 8, 100, window=3)
    assert together.waves == 1 and waves.waves == 3  # 3 + 3 + 2
    assert together.parts_s["decode"] == pytest.approx(100 * 0.0102)  # 8 sequences at once
    assert waves.parts_s["decode"] == pytest.approx(2 * 100 * 0.0100 + 100 * 0.0100)  # 3, 3 and 2 at a time
    assert waves.parts_s["prefill"] == pytest.approx(3 * together.parts_s["prefill"])
    assert waves.parts_s["merge"] == together.parts_s["merge"]  # one merge after the last wave
    # The deadline is read in one branch's tokens: all the waves' time leaves a whole branch.
    assert waves.tokens_by(waves.needed_s) == pytest.approx(100)
    assert model.predict("plain", load, "majority", 3, 100, window=3).waves == 1
    assert model.predict("plain", load, "beam_search", 8, 100, window=3).waves == 1  # search has no waves


def test_a_tight_budget_with_early_stopping_keeps_to_one_wave():
    planner, loads = setup(SPEC_NEVER_PAYS)
    # Budget 1.5 s: one wave of 100 tokens at ~0.01 s per token fits, two do not.
    plain = planner.plan(request(1.5, method="majority"), loads)
    windowed = planner.plan(request(1.5, method="majority", early_stop_window=3), loads)
    assert plain.num_branches > 3
    assert windowed.num_branches <= 3 and windowed.predicted_s <= 1.5


def test_expected_tokens_are_memoized_per_model_branches_and_max_tokens():
    planner, _ = setup(SPEC_NEVER_PAYS, lengths=(40, 80, 120, 160))
    model, calibration = planner.latency, planner.latency.calibration.models["m"]
    for b, max_tokens in ((1, 200), (4, 200), (4, 100), (4, 200)):
        assert model.expected_tokens("m", b, max_tokens) == calibration.expected_max_length(b, max_tokens)
    assert model.expected_tokens("m", 4, 100) < model.expected_tokens("m", 4, 200)  # capped at 100
    assert model.expected_tokens("other", 4, 100) == 100.0  # uncalibrated model: the worst case
    assert len(model._expected_tokens) == 4  # (1, 200), (4, 200), (4, 100), other


def _busy_spec(deadline_tokens: float, requests: int = 4, branches: int = 4):
    """Both pools on one device (contention 0.3 per busy engine); ``requests`` requests of
    ``branches`` branches in flight on spec, each with 1 s of its decode window left and
    ``deadline_tokens`` tokens by its deadline (every answer is 100 tokens long)."""
    planner, loads = setup(SPEC_PAYS_SMALL)
    planner.weigh_inflight = True
    for load in loads.values():
        load.compute_group, load.group_slowdown = "node", 0.3
    loads["spec"].inflight_branches, loads["spec"].active_requests = requests * branches, requests
    loads["plain"].co_busy = 1  # spec is busy; plain is idle
    inflight = [InFlight(pool="spec", model_id="m", method="majority", branches=branches, max_tokens=200,
                         seconds_per_token=0.012, deadline_tokens=deadline_tokens, window_s=1.0)
                for _ in range(requests)]
    return planner, loads, inflight


def test_tokens_lost_follow_the_slowdown_over_the_overlap():
    planner, loads, inflight = _busy_spec(deadline_tokens=150)
    latency, waiting = planner.latency, inflight[0]
    # Starting the idle plain engine: spec's contention goes from 1 to 1.3 for the overlap
    # (0.5 s of a 1 s window): 0.5 / 0.012 tokens at 1 - 1/1.3 of the speed.
    assert slowdown("spec", "plain", 1, loads, latency) == pytest.approx(1.3)
    assert tokens_lost(waiting, 1.3, 0.5) == pytest.approx(0.5 / 0.012 * (1 - 1 / 1.3))
    # 16 more branches on spec itself: 16 -> 32 sequences, 12 ms -> 30 ms a token; the overlap
    # is capped at the request's window.
    assert slowdown("spec", "spec", 16, loads, latency) == pytest.approx(30 / 12)
    assert tokens_lost(waiting, 30 / 12, 5.0) == pytest.approx(1.0 / 0.012 * (1 - 12 / 30))
    loads["plain"].inflight_branches = 2  # plain already decoding: no new contention
    assert slowdown("spec", "plain", 8, loads, latency) == 1.0
    loads["plain"].inflight_branches = 0
    loads["plain"].compute_group = None  # another device
    assert slowdown("spec", "plain", 8, loads, latency) == 1.0
    past = InFlight(**{**waiting.__dict__, "window_s": -0.1})  # at its deadline already
    assert tokens_lost(past, 2.0, 5.0) == 0.0


def test_a_plan_that_would_push_the_requests_in_flight_past_their_deadlines_is_not_chosen():
    # 4 requests on spec whose deadlines leave them 112 tokens for their 100: a little room.
    # Starting plain (idle, on their device) would cost each about 19 tokens; one more branch
    # on spec (16 -> 17 sequences) about 7.
    planner, loads, inflight = _busy_spec(deadline_tokens=112)
    alone = planner.plan(request(2.0), loads)
    assert alone.pool == "plain"  # the idle engine is the quickest for this request alone
    weighed = planner.plan(request(2.0), loads, inflight)
    assert weighed.pool == "spec" and weighed.harm_to_inflight == 0.0
    assert weighed.expected_accuracy is not None and weighed.deadline_tokens >= 100
    # ... which is what starting plain would cost them: each of the 4 loses its answer
    harm = planner._harm("plain", alone.num_branches, 1.0, loads, inflight, {})
    accuracy = planner._accuracy("m", "majority", 4, inflight[0].deadline_tokens, 200)
    assert accuracy > 0.5 and harm == pytest.approx(4 * accuracy)
    # With room to spare, nothing is lost and the request goes where it is best for itself.
    _, loads, roomy = _busy_spec(deadline_tokens=200)
    assert planner.plan(request(2.0), loads, roomy).pool == alone.pool
    # A fixed plan is not reweighed: it runs what it asked for.
    fixed = planner.plan(request(2.0, method="majority", branches=2), loads, inflight)
    assert fixed.harm_to_inflight is None
    # Off, the requests in flight are not looked at.
    planner.weigh_inflight = False
    assert planner.plan(request(2.0), loads, inflight).pool == alone.pool


def test_when_nothing_fits_the_plan_that_costs_the_others_least_then_the_quickest():
    # Branches have been running up to 1.5x slower than predicted, and at that slow end no
    # plan's 100 tokens fit in 1.5 s (one branch alone: 1.36 s predicted, so no 429).
    planner, loads, inflight = _busy_spec(deadline_tokens=112)
    for load in loads.values():
        load.speed_spread = (1.0, 1.5)
    quickest = planner.plan(request(1.5), loads)
    assert quickest.num_branches == 1 and quickest.pool == "plain"  # the idle engine
    weighed = planner.plan(request(1.5), loads, inflight)
    # one branch on spec, beside them: not the idle engine that would slow them all, and
    # not more branches, which the table would favour at the deadline's edge
    assert (weighed.pool, weighed.num_branches) == ("spec", 1)
    assert weighed.harm_to_inflight == 0.0


def test_an_early_stopping_plan_slows_the_others_by_one_wave():
    # 125 tokens for 100: 3 more sequences beside them (16 -> 19) cost each 18 tokens, 12
    # more (16 -> 28) 44.
    planner, loads, inflight = _busy_spec(deadline_tokens=125)
    cache: dict = {}
    assert planner._harm("spec", 3, 1.0, loads, inflight, cache) == 0.0
    assert planner._harm("spec", 12, 1.0, loads, inflight, cache) > 0.0
    # on spec, in waves of 3: more branches than 3, costing them nothing (all at once they would)
    plan = planner.plan(request(4.0, early_stop_window=3, num_speculative_tokens=4), loads, inflight)
    assert plan.num_branches > 3 and plan.harm_to_inflight == 0.0


def test_429_when_one_branch_fits_only_where_it_would_cost_the_requests_in_flight():
    # 24 branches in flight on spec (22 ms a token there now): one more takes 2.3 s on spec, or
    # 1.36 s on the idle plain engine, which would slow all four past their deadlines.
    planner, loads, inflight = _busy_spec(deadline_tokens=112, branches=6)
    assert planner.plan(request(1.5), loads).pool == "plain"
    with pytest.raises(Infeasible, match="costs the requests in flight least") as raised:
        planner.plan(request(1.5), loads, inflight)
    assert raised.value.predicted_s > 2.0 and raised.value.retry_after_s >= 1
    # with room in their deadlines, plain costs them nothing and serves the request
    _, loads, roomy = _busy_spec(deadline_tokens=300, branches=6)
    assert planner.plan(request(1.5), loads, roomy).pool == "plain"


def test_steady_state_plans_as_if_every_request_ran_the_plan():
    from dataclasses import replace

    planner, loads = setup(SPEC_NEVER_PAYS)
    steady = Planner(planner.latency, steady_state=True)
    # A stream of 8 requests: 7 in flight on the plain pool with one branch each (the
    # stream's earlier plans), the 8th being planned.
    stream = {"recent_requests": 7.0, "cluster_active_requests": 7}
    loads = {"spec": replace(loads["spec"], **stream),
             "plain": replace(loads["plain"], inflight_branches=7, active_requests=7, **stream)}
    ask = request(1.2, method="majority")
    # Sized on the branches in flight now, a request takes what the others leave free, up to
    # its fair share (64 slots among 8 requests): 8 more sequences fit on the plain pool.
    arriving = planner.plan(ask, loads)
    assert arriving.pool == "plain" and arriving.num_branches == 8
    # In the steady state all 8 run the plan: 2 branches each is 16 sequences (1.11 s); 3
    # would be 24, past the knee (15.25 ms: 100 tokens need 1.585 s, and a branch cut at 75
    # tokens has no answer), and speculation never pays here.
    plan = steady.plan(ask, loads)
    assert (plan.pool, plan.num_branches) == ("plain", 2) and not plan.expected_cut
    assert plan.planned_s == pytest.approx(0.01 + 100 * 0.0105 + 0.05)
    assert plan.predicted_s < plan.planned_s  # reported at the load in flight now (9 sequences)
    # The latency correction does not size it (learned from the requests that finish, it reads
    # low where plans are cut): at 0.5 it would make 32 sequences look like 10 ms a token.
    corrected = {name: replace(load, latency_correction=0.5) for name, load in loads.items()}
    assert steady.plan(ask, corrected).num_branches == 2
    # A fixed B is kept, and admission is a fixed request's: 429 only when one branch misses.
    assert steady.plan(request(1.2, method="majority", branches=5), loads).num_branches == 5
    with pytest.raises(Infeasible):
        steady.plan(request(0.1, method="majority"), loads)


def test_steady_state_shares_the_slots_among_the_stream_not_the_slots_free_now():
    from dataclasses import replace

    # Every branch up to 64 sequences decodes alike: more branches are always more accurate.
    flat = [12] * 7
    planner, loads = setup(flat)
    steady = Planner(planner.latency, steady_state=True)
    ask = request(60.0, method="majority")
    # A stream of 8 (7 in flight beside this one): 64 slots // 8 = 8 branches each.
    stream = {"recent_requests": 7.0, "cluster_active_requests": 7}
    calm = {name: replace(load, **stream) for name, load in loads.items()}
    assert steady.plan(ask, calm).num_branches == 8
    # With 9 requests' branches booked (one answered, its release not yet come) the fair share
    # of one more request is 64 // 9 = 7 branches; the steady state's stays 8.
    booked = {name: replace(load, inflight_branches=64, active_requests=8, **stream) for name, load in loads.items()}
    assert Planner._fair_share(booked["plain"]) == 7
    assert Planner(planner.latency, steady_state=True).plan(ask, booked).num_branches == 8


def test_steady_state_runs_plans_the_deadline_is_expected_to_cut():
    majority, latency = short_and_long_problems()
    loads = {"plain": PoolLoad("m", 0, replicas=1, slots_per_replica=64, recent_requests=3.0)}
    ask = request(1.12, method="majority")
    # Fit first: one branch (10 ms + 100 expected tokens x 10 ms + 50 ms = 1.06 s) is the only
    # plan that fits; two expect a longest branch of 125 tokens.
    fit_first = Planner(latency).plan(ask, loads)
    assert fit_first.num_branches == 1 and not fit_first.expected_cut
    # Steady state, 4 requests: 4 branches each is 16 sequences at 10.5 ms, which leave a
    # branch 101 tokens, enough for the short problems, and a typical branch (100 tokens)
    # still finishes; 5 each (20 sequences, 12.9 ms) would not, and 3 each vote less.
    plan = Planner(latency, steady_state=True).plan(ask, loads)
    assert plan.num_branches == 4 and plan.expected_cut
    assert plan.expected_accuracy == pytest.approx(majority[3] * (0.5 + 0.5 * (1.06 / 0.0105 - 50) / 100))
    assert plan.expected_accuracy > fit_first.expected_accuracy + 0.05


def test_steady_state_holds_its_branch_count_against_small_swings_and_falls_back_to_the_quickest():
    from dataclasses import replace

    # A third branch adds a point, more add nothing.
    votes = {"majority": [0.4, 0.6] + [0.61] * 30, "single": [0.4]}
    planner, loads = setup(SPEC_NEVER_PAYS, accuracy=votes)
    stream = {"recent_requests": 7.0, "cluster_active_requests": 7}
    loads = {name: replace(load, **stream) for name, load in loads.items()}
    ask = request(1.2, method="majority")
    steady = Planner(planner.latency, steady_state=True)
    # 2 branches each (16 sequences, 10.5 ms) let a typical branch finish; 3 (24, 15.25 ms) not
    first = steady.plan(ask, loads)
    assert (first.pool, first.num_branches) == ("plain", 2)
    # the plain pool turns 30% faster: 3 branches each would finish too (10.7 ms), a point
    # more accurate; planned afresh that is the plan, but the held 2 stay
    faster = {**loads, "plain": replace(loads["plain"], speed_factors={b: 0.7 for b in range(8)})}
    assert Planner(planner.latency, steady_state=True).plan(ask, faster).num_branches == 3
    assert (steady.plan(ask, faster).pool, steady.plan(ask, faster).num_branches) == ("plain", 2)
    # another kind of request (its own budget) is planned afresh
    assert steady.plan(request(1.19, method="majority"), faster).num_branches == 3
    # The pool is not held: two branches vote as well as any more here, the quickest pool wins
    # a tie, and when the plain pool turns 30% slower than profiled (13.65 ms at 16 sequences
    # against speculation's 13 ms) the stream moves to the speculating pool.
    flat = {"majority": [0.4] + [0.6] * 31, "single": [0.4]}
    planner, loads = setup(SPEC_NEVER_PAYS, accuracy=flat)
    loads = {name: replace(load, **stream) for name, load in loads.items()}
    slower = {**loads, "plain": replace(loads["plain"], speed_factors={b: 1.3 for b in range(8)})}
    steady = Planner(planner.latency, steady_state=True)
    assert steady.plan(request(3.0, method="majority"), loads).pool == "plain"
    assert steady.plan(request(3.0, method="majority"), slower).pool == "spec"
    # On one device (a compute group), with the stream on the plain pool now: the idle
    # speculating pool is priced as if the stream ran there alone, not beside its present
    # self (30% slower for the busy plain pool: 16.9 ms, which would keep it on plain).
    shared = {"compute_group": "node", "group_slowdown": 0.3}
    on_plain = {"spec": replace(loads["spec"], co_busy=1, **shared),
                "plain": replace(slower["plain"], inflight_branches=14, active_requests=7, **shared)}
    assert Planner(planner.latency, steady_state=True).plan(request(3.0, method="majority"), on_plain).pool == "spec"
    # No typical branch finishes at 1.07 s in the steady state (one branch each is 8 sequences,
    # 10.2 ms: 1.08 s), though one alone would (1.06 s, so no 429): the quickest plan, one
    # branch on the plain pool.
    quickest = Planner(planner.latency, steady_state=True).plan(request(1.07, method="majority"), loads)
    assert (quickest.pool, quickest.num_branches, quickest.planned_s) == ("plain", 1, pytest.approx(1.08))


def test_steady_state_admits_on_the_draft_length_it_chose():
    from dataclasses import replace

    # Two branches vote as well as any more: the quickest of the best plans wins.
    planner, loads = setup(SPEC_PAYS_SMALL, accuracy={"majority": [0.4] + [0.6] * 31, "single": [0.4]})
    steady = Planner(planner.latency, steady_state=True)
    # One request in flight, with 60 branches on the speculating pool. In the steady state
    # (two requests) speculation is 3x faster at 4 sequences, so two branches there are the
    # plan; but one branch there now decodes among 61 (70 ms a token: 7 s), and the idle
    # plain pool it will not run on (1.06 s) does not admit it.
    stream = {"recent_requests": 1.0, "cluster_active_requests": 1}
    loads = {"spec": replace(loads["spec"], inflight_branches=60, active_requests=1, **stream),
             "plain": replace(loads["plain"], **stream)}
    calm = {**loads, "spec": replace(loads["spec"], inflight_branches=0, active_requests=0)}
    chosen = steady.plan(request(1.2, method="majority"), calm)
    assert (chosen.pool, chosen.num_branches) == ("spec", 2)
    with pytest.raises(Infeasible):
        steady.plan(request(1.2, method="majority"), loads)
    # a fixed request for either pool is admitted on that pool's own test
    assert planner.plan(request(1.2, method="majority", branches=1, num_speculative_tokens=0), loads).pool == "plain"


def test_a_split_stream_runs_on_both_pools_when_each_has_its_own_device():
    from dataclasses import replace

    planner, loads = setup(SPEC_NEVER_PAYS)
    stream = {"recent_requests": 8.0, "cluster_active_requests": 0}
    loads = {name: replace(load, **stream) for name, load in loads.items()}
    ask = request(1.5, method="majority")
    # All 8 on the plain pool: 2 branches each (16 sequences, 10.5 ms a token: 1.11 s); 3 each
    # (24 sequences, 14.25 ms: 1.49 s plus the reserve) leave a typical branch no time.
    whole = Planner(planner.latency, steady_state=True).plan(ask, loads)
    assert (whole.pool, whole.num_branches, whole.stream_split) == ("plain", 2, None)
    # Split over the two pools, each part decodes a smaller batch and runs more branches.
    split = Planner(planner.latency, split_stream=True)
    first = split.plan(ask, loads)
    assert set(first.stream_split) == {"spec", "plain"} and sum(first.stream_split.values()) == 8
    assert first.num_branches > 2 and first.expected_accuracy > whole.expected_accuracy
    # Each request joins the part furthest below its share: with the first request's part
    # full, the next goes to the other pool.
    full = {**loads, first.pool: replace(loads[first.pool], active_requests=first.stream_split[first.pool],
                                         inflight_branches=first.stream_split[first.pool] * first.num_branches)}
    second = split.plan(ask, full)
    assert second.pool != first.pool and second.stream_split == first.stream_split
    # A fixed request is planned as before, on one pool.
    assert split.plan(request(1.5, method="majority", branches=2), loads).stream_split is None


def test_a_split_stream_is_priced_with_the_device_it_shares():
    from dataclasses import replace

    planner, loads = setup(SPEC_NEVER_PAYS)
    # Two engines time-sharing one device: each decodes at half speed beside the other
    # (slowdown 1.0), so no split leaves a typical branch time, and the whole stream stays on
    # the plain pool, as with steady_state.
    shared = {"recent_requests": 8.0, "compute_group": "node", "group_slowdown": 1.0}
    loads = {name: replace(load, **shared) for name, load in loads.items()}
    plan = Planner(planner.latency, split_stream=True).plan(request(1.5, method="majority"), loads)
    assert (plan.pool, plan.num_branches, plan.stream_split) == ("plain", 2, {"plain": 8})
    # A small slowdown (10%) leaves the split worth it.
    light = {name: replace(load, group_slowdown=0.1) for name, load in loads.items()}
    plan = Planner(planner.latency, split_stream=True).plan(request(1.5, method="majority"), light)
    assert set(plan.stream_split) == {"spec", "plain"}


def test_a_split_stream_must_beat_the_whole_stream_by_the_split_margin():
    from dataclasses import replace

    from tts_ray.planner.planner import SPLIT_MARGIN_ACCURACY

    planner, loads = setup(SPEC_NEVER_PAYS)
    ask = request(3.0, method="majority")

    def gain_and_plan(group_slowdown):
        shared = {"recent_requests": 8.0, "compute_group": "node", "group_slowdown": group_slowdown}
        pools = {name: replace(load, **shared) for name, load in loads.items()}
        split = Planner(planner.latency, split_stream=True)

        def part(name, requests, co_busy):
            ranked = split._steady_candidates(ask, name, pools[name], requests, co_busy)
            return ranked[max(ranked, key=lambda c: ranked[c][0])][2]

        whole = max(part(name, 8, 0) for name in pools)
        best_split = max((n * part("plain", n, 1) + (8 - n) * part("spec", 8 - n, 1)) / 8 for n in range(1, 8))
        return best_split - whole, split.plan(ask, pools)

    # a neighbour that slows each engine by 30%: the best split (5 requests on plain, 3 on
    # spec) is predicted more accurate than the whole stream on plain, but by under the margin
    gain, plan = gain_and_plan(0.3)
    assert 0.02 < gain <= SPLIT_MARGIN_ACCURACY
    assert (plan.pool, plan.num_branches, plan.stream_split) == ("plain", 5, {"plain": 8})
    # by 10%: the split gains more than the margin and runs
    gain, plan = gain_and_plan(0.1)
    assert gain > SPLIT_MARGIN_ACCURACY
    assert plan.stream_split == {"plain": 5, "spec": 3} and plan.num_branches == 7


def test_a_split_stream_breaks_ties_between_pools_on_the_profile_not_the_live_speeds():
    from dataclasses import replace

    planner, loads = setup(SPEC_PAYS_SMALL)
    # One branch a request, on a device that halves each engine beside the other (no split
    # pays): the budget leaves one branch time to finish on either pool, so both read the same
    # expected accuracy. The profile has the speculating pool quicker (3.6 ms a token at 8
    # sequences against 10); live factors of 2 and 3 have it slower (7.2 and 10.8 ms).
    shared = {"recent_requests": 8.0, "compute_group": "node", "group_slowdown": 1.0}
    for factor in (2.0, 3.0):
        pools = {"spec": replace(loads["spec"], speed_factors={b: factor for b in range(8)}, **shared),
                 "plain": replace(loads["plain"], **shared)}
        for budget_s in (2.0, 5.0):
            split = Planner(planner.latency, split_stream=True)
            ranked = {name: split._steady_candidates(request(budget_s, method="majority", max_branches=1),
                                                     name, pools[name], 8, 0)["majority", 1] for name in pools}
            assert ranked["spec"][2] == ranked["plain"][2]
            assert ranked["spec"][1].needed_s > ranked["plain"][1].needed_s
            plan = split.plan(request(budget_s, method="majority", max_branches=1), pools)
            assert (plan.pool, plan.stream_split) == ("spec", {"spec": 8})


def test_a_split_stream_chooses_its_pools_on_the_profile_and_each_parts_branches_live():
    from dataclasses import replace

    planner, loads = setup(SPEC_PAYS_SMALL)
    shared = {"recent_requests": 8.0, "compute_group": "node", "group_slowdown": 1.0}
    profiled = {name: replace(load, **shared) for name, load in loads.items()}
    # Live factors read both pools twice as fast as the profile: the same on both, so the live
    # speeds favour the pool whose profile is slower (plain) the more.
    live = {name: replace(load, speed_factors={b: 0.5 for b in range(8)}) for name, load in profiled.items()}

    def plan(budget_s, pools, on_profile):
        chosen = Planner(planner.latency, split_stream=True, pools_on_profile=on_profile).plan(
            request(budget_s, method="majority"), pools)
        return chosen.pool, chosen.num_branches, chosen.stream_split

    # At 1 s the live ranking runs three branches on plain. The profile's puts the stream on
    # spec (one branch there by the profile alone), and the live speeds give spec's part two.
    assert plan(1.0, live, on_profile=False) == ("plain", 3, {"plain": 8})
    assert plan(1.0, profiled, on_profile=True) == ("spec", 1, {"spec": 8})
    assert plan(1.0, live, on_profile=True) == ("spec", 2, {"spec": 8})
    # At 1.5 s both choose plain, with the live speeds' five branches (the profile's: two).
    assert plan(1.5, profiled, on_profile=True) == ("plain", 2, {"plain": 8})
    assert plan(1.5, live, on_profile=True) == ("plain", 5, {"plain": 8})


def test_a_split_streams_parts_keep_the_profiles_branches_unless_the_live_speeds_say_otherwise():
    from dataclasses import replace

    # each branch past two adds one point of expected accuracy
    votes = {"majority": [0.4, 0.5] + [0.5 + 0.01 * b for b in range(1, 31)], "single": [0.4]}
    planner, loads = setup(SPEC_NEVER_PAYS, accuracy=votes)
    shared = {"recent_requests": 7.0, "compute_group": "node", "group_slowdown": 1.0}

    def live(factor):
        return {name: replace(load, speed_factors={b: factor for b in range(8)}, **shared)
                for name, load in loads.items()}

    split = Planner(planner.latency, split_stream=True, pools_on_profile=True)
    ask = request(3.0, method="majority")
    # live as profiled: the profile's five branches a request on the plain pool
    assert (split.plan(ask, live(1.0)).pool, split.plan(ask, live(1.0)).num_branches) == ("plain", 5)
    # 10% faster: six would finish too, one point more accurate; the profile's five stay
    assert split.plan(ask, live(0.9)).num_branches == 5
    # 30% faster: eight finish, three points more accurate
    assert split.plan(ask, live(0.7)).num_branches == 8
    # 20% slower: five no longer finish, four do
    assert split.plan(ask, live(1.2)).num_branches == 4
    # as profiled again: back to five at once (held, four would stay, one point behind)
    assert split.plan(ask, live(1.0)).num_branches == 5


def test_a_split_stream_holds_its_state_against_small_swings():
    from dataclasses import replace

    planner, loads = setup(SPEC_NEVER_PAYS)
    loads = {name: replace(load, recent_requests=8.0) for name, load in loads.items()}
    ask = request(1.5, method="majority")
    split = Planner(planner.latency, split_stream=True)
    first = split.plan(ask, loads)
    assert first.stream_split == {"plain": 4, "spec": 4}
    # the plain pool turns 10% faster: planned afresh, its part grows to 5 (by under the 2
    # points that move a held state); held, nothing moves
    faster = {**loads, "plain": replace(loads["plain"], speed_factors={b: 0.9 for b in range(8)})}
    assert Planner(planner.latency, split_stream=True).plan(ask, faster).stream_split == {"plain": 5, "spec": 3}
    assert split.plan(ask, faster).stream_split == first.stream_split
    # twice as slow: the held state's parts no longer finish, and the stream moves
    slower = {**loads, "plain": replace(loads["plain"], speed_factors={b: 2.0 for b in range(8)})}
    assert split.plan(ask, slower).stream_split != first.stream_split


def test_a_split_stream_admits_a_request_on_another_part_before_turning_it_away():
    from dataclasses import replace

    planner, loads = setup(SPEC_NEVER_PAYS)
    loads = {name: replace(load, recent_requests=8.0) for name, load in loads.items()}
    ask = request(1.5, method="majority")
    split = Planner(planner.latency, split_stream=True)
    assert split.plan(ask, loads).stream_split == {"plain": 4, "spec": 4}
    # The plain part is furthest below its share (no request on it), but 60 branches decode
    # there now: one more would take 40 ms a token (4 s). The speculating part admits it.
    jammed = {**loads, "plain": replace(loads["plain"], inflight_branches=60)}
    plan = split.plan(ask, jammed)
    assert plan.pool == "spec" and plan.stream_split == {"plain": 4, "spec": 4}
    # with both pools jammed, one branch misses everywhere: 429
    both = {name: replace(load, inflight_branches=60) for name, load in jammed.items()}
    with pytest.raises(Infeasible):
        split.plan(ask, both)


def test_a_split_stream_takes_the_quicker_pool_for_the_same_plan_within_the_switch_margin():
    from dataclasses import replace

    planner, loads = setup(SPEC_PAYS_SMALL, lengths=tuple(range(60, 160, 5)))
    # One device that halves each engine beside the other (no split pays); one branch each.
    # The speculating pool decodes one branch a request twice as fast (5 ms a token at 8
    # sequences against 10.2), but a slow tail in its speed spread (one quantile at 2.2x)
    # costs it expected accuracy.
    shared = {"recent_requests": 8.0, "compute_group": "node", "group_slowdown": 1.0}
    tail = {"spec": replace(loads["spec"], speed_spread=(1.0, 1.0, 1.0, 1.0, 2.2), **shared),
            "plain": replace(loads["plain"], **shared)}
    split = Planner(planner.latency, split_stream=True)
    # At 1.6 s it is 1.4 points less accurate (0.432 against 0.447): within 2 points, the
    # quicker pool runs the stream.
    close = split.plan(request(1.6, method="majority", max_branches=1), tail)
    assert (close.pool, close.stream_split) == ("spec", {"spec": 8})
    # At 1.8 s, 2.3 points (0.447 against 0.470): the more accurate pool.
    apart = Planner(planner.latency, split_stream=True).plan(request(1.8, method="majority", max_branches=1), tail)
    assert (apart.pool, apart.stream_split) == ("plain", {"plain": 8})
