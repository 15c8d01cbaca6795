"""The planner: for one request, the pool (model tier and draft length k), method and branch
count B with the highest expected accuracy whose predicted latency fits the budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tts_ray.planner.early_stop import wave_sizes
from tts_ray.planner.latency import SCORED, LatencyModel, PoolLoad

# Methods the planner may pick by itself: parallel sampling, calibrated per B. Step-level
# search is run when asked for, but not chosen automatically.
AUTO_METHODS = ("single", "majority", "weighted_majority", "best_of_n")
# Steady state: a held plan gives way only to one expected this much more accurate.
STEADY_SWITCH_ACCURACY = 0.02
# Split stream: a state that splits the stream over two pools must beat the whole stream on one
# pool by more than this. Its gain rests on how two pools of one device slow each other, which
# is priced least well: in run z5 the split chosen at 1 s read 2.3 points above the whole
# stream on the speculating pool (offline, fresh keeper) and scored 2.7 points below it.
SPLIT_MARGIN_ACCURACY = 0.03
STEADY_KINDS_KEPT = 1024  # held plans (one per kind of request: budget, model, ...), then forgotten


class Infeasible(Exception):
    """Even one branch cannot finish inside the budget: answer 429 with ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float, predicted_s: float) -> None:
        super().__init__(message)
        self.retry_after_s, self.predicted_s = retry_after_s, predicted_s


@dataclass
class PlanRequest:
    """What a request leaves to the planner: None means "auto" for method and branches, and
    "any tier" for the model."""

    budget_s: float
    max_tokens: int
    model_id: str | None = None
    method: str | None = None
    branches: int | None = None
    num_speculative_tokens: int | None = None
    max_branches: int = 64
    scored_available: bool = True
    default_method: str = "majority"
    default_branches: int = 8
    early_stop_window: int | None = None  # early stopping: branches run in waves of this many


@dataclass
class InFlight:
    """A request already admitted, as far as a new plan can slow it down (kept by the keeper)."""

    pool: str
    model_id: str
    method: str
    branches: int
    max_tokens: int
    seconds_per_token: float  # a branch's decode speed now, at the load in flight
    deadline_tokens: float  # tokens a branch will have decoded by its generation deadline at that speed
    window_s: float  # seconds from now until its generation deadline


def slowdown(own_pool: str, pool: str, sequences: int, loads: dict[str, PoolLoad],
             latency: LatencyModel) -> float:
    """How many times slower a branch on ``own_pool`` decodes while ``sequences`` more decode on
    ``pool``: the rise of its pool's live seconds per token at the higher concurrency (the same
    pool), or of its contention when ``pool`` is an idle pool of its compute group that starts
    decoding; 1 for a pool on another device (or one already decoding beside it)."""
    own = loads.get(own_pool)
    if own is None:
        return 1.0
    if own_pool == pool:
        if not latency.knows(pool):
            return 1.0
        replicas = max(1, own.replicas)
        before = math.ceil(max(1, own.inflight_branches) / replicas)
        after = math.ceil((own.inflight_branches + sequences) / replicas)
        return latency.seconds_per_token(pool, own, after) / latency.seconds_per_token(pool, own, before)
    if (own.compute_group is not None and pool in loads
            and loads[pool].compute_group == own.compute_group and loads[pool].inflight_branches == 0):
        return (1 + own.group_slowdown * (own.co_busy + 1)) / own.contention
    return 1.0


def tokens_lost(request: InFlight, factor: float, duration_s: float) -> float:
    """Decode tokens ``request`` loses by its deadline when it decodes ``factor`` times slower
    (``slowdown``) for ``duration_s`` from now (only the part inside its window counts)."""
    if request.window_s <= 0 or request.seconds_per_token <= 0 or factor <= 1.0:
        return 0.0
    overlap_s = min(duration_s, request.window_s)
    return overlap_s / request.seconds_per_token * (1 - 1 / factor)


@dataclass
class Plan:
    """The chosen configuration and why."""

    pool: str
    model_id: str
    method: str
    num_branches: int
    num_speculative_tokens: int
    predicted_s: float | None  # at the load in flight now: what the prediction error is measured on
    expected_accuracy: float | None
    auto: bool
    fair_share: int | None = None
    candidates: int = 0
    predicted_parts_s: dict[str, float] = field(default_factory=dict)
    branch_finish_probability: float | None = None  # P(a branch ends before the deadline)
    merge_margin_s: float | None = None  # set by the keeper: its learned margin
    # an auto plan is chosen on a burst-sized load (see Planner._planning_load): its prediction
    # there, which is not what the request is expected to take if the burst does not come
    planned_s: float | None = None
    latency_correction: float | None = None  # the pool's correction the prediction includes
    # at the load in flight now: a branch's decode speed and the tokens it can decode before
    # the generation deadline (the keeper tracks what later plans take from them)
    seconds_per_token: float | None = None
    deadline_tokens: float | None = None
    # expected accuracy the plan costs the requests in flight (they decode slower beside it)
    harm_to_inflight: float | None = None
    # ranked by expected accuracy (auto_ranking "expected_accuracy") though its expected
    # longest branch does not fit: the deadline is expected to cut the longer problems
    expected_cut: bool = False
    # a split steady state (auto_ranking "steady_split"): the stream's requests per pool
    stream_split: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Planner:
    """Exhaustive search over (pool, method, B): the grid is small (pools x 4 x max_branches),
    so the latency-optimal choice is exact rather than the paper's greedy approximation.

    Among plans whose expected longest branch fits the budget (even decoding at the slow
    end of the pool's recent speed spread, ``PoolLoad.speed_spread``), the objective is the
    calibrated accuracy *as the deadline leaves it*: from the plan's seconds per token, the
    tokens T a branch can decode before the deadline, and the calibration's accuracy at B
    branches when those longer than T are cut and the rest vote, measured per problem
    (``accuracy_by_tokens``; without it, K ~ Binomial(B, p) independent finishers). Extra
    branches are insurance only where lengths vary within a problem: on the testbed they
    hardly do, and assuming independence had the planner double its branches under
    deadline pressure for insurance that does not exist. The fit test stays: the deadline
    would cut an over-long plan, but its branches would still load the pool for everyone else.

    Weighing the requests in flight (``weigh_inflight``, for calibrated auto plans), a fitting
    plan's value is its expected accuracy less what it costs them (``_harm``): its branches
    make theirs decode slower while they overlap, so their deadlines leave them fewer tokens.
    When no plan fits, the one that costs them least is taken, then the quickest.

    Ranking by accuracy (``rank_by_accuracy``, for calibrated auto plans): every plan whose
    typical branch (the expected length of one, not the longest of B) fits at the slow end is
    ranked by its expected accuracy, fitting or not, fitting breaking ties; a chosen plan that
    does not fit is ``expected_cut`` (the keeper does not learn its correction from it).

    Symmetric load (``symmetric_load``, for auto plans): a plan of B branches is predicted as
    if every request in flight lately ran B on its pool too (``_planning_load``).

    Steady state (``steady_state``, for calibrated auto plans): the plan is the one a steady
    stream of requests planned alike would do best with, as a fixed (pool, B) would be chosen:
    each candidate is predicted at the load of every request in flight lately running it on
    its pool (``_steady_load``, without the latency correction) and, among those whose typical
    branch finishes there, ranked by its expected accuracy as the deadline leaves it, with no
    fit test for the longest branch (the accuracy already prices the branches the deadline
    cuts); when none qualifies, the quickest. The last B for the same kind of request is held
    on the pool chosen against small swings; admission is a fixed request's of the chosen
    draft length. A plan that does not fit is ``expected_cut``.

    Admission (``Infeasible``, a 429): when one branch is predicted to miss the budget at the
    load in flight now, on every pool, without the latency correction. With
    ``admit_auto_if_fits``, an auto request is also turned away when no plan fits at the load
    now as plans are fitted (one branch, the correction included, at the slow end of the speed
    spread): otherwise it runs the quickest plan, which the deadline is expected to cut.
    """

    def __init__(self, latency: LatencyModel | None, weigh_inflight: bool = False,
                 admit_auto_if_fits: bool = False, rank_by_accuracy: bool = False,
                 symmetric_load: bool = False, steady_state: bool = False, split_stream: bool = False,
                 pools_on_profile: bool = False) -> None:
        self.latency, self.weigh_inflight = latency, weigh_inflight
        self.admit_auto_if_fits, self.rank_by_accuracy = admit_auto_if_fits, rank_by_accuracy
        self.symmetric_load = symmetric_load
        self.steady_state, self.split_stream = steady_state or split_stream, split_stream
        self.pools_on_profile = pools_on_profile
        # steady state: the plan last chosen per kind of request (see _plan_steady), and with
        # split_stream the split last chosen (see _plan_split)
        self._steady_held: dict[tuple, tuple[str, str, int]] = {}
        self._split_held: dict[tuple, tuple[tuple[str, int, str, int], ...]] = {}

    def _accuracy(self, model_id: str, method: str, branches: int, tokens: float, max_tokens: int) -> float | None:
        """Calibrated accuracy of ``method`` at ``branches`` when the deadline leaves each branch
        ``tokens`` decode tokens; None when uncalibrated."""
        calibration = self.latency.calibration if self.latency else None
        if calibration is None or model_id not in calibration.models:
            return None
        return calibration.models[model_id].accuracy_within(method, branches, tokens, max_tokens)

    def _accuracy_over_spread(self, load: PoolLoad, method: str, branches: int, tokens: float,
                              max_tokens: int) -> float | None:
        """Mean calibrated accuracy over the pool's speed spread: at each multiplier m of
        ``load.speed_spread`` the deadline leaves ``tokens / m`` tokens (decoding m times
        slower). None when uncalibrated."""
        values = [self._accuracy(load.model_id, method, branches, tokens / m, max_tokens)
                  for m in load.speed_spread]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def _finish_probability(self, model_id: str, prediction, budget_s: float, max_tokens: int) -> float:
        """P(one branch finishes by the deadline) from the calibrated lengths; 1.0 uncalibrated."""
        calibration = self.latency.calibration if self.latency else None
        if calibration is None or model_id not in calibration.models:
            return 1.0
        return calibration.models[model_id].finish_probability(prediction.tokens_by(budget_s), max_tokens)

    def _harm(self, pool: str, sequences: int, duration_s: float, pools: dict[str, PoolLoad],
              inflight: Sequence[InFlight], cache: dict) -> float:
        """Expected accuracy the requests in ``inflight`` lose (summed) if ``sequences`` more
        branches decode on ``pool`` for ``duration_s``: each one's calibrated accuracy at the
        tokens its deadline leaves it, before and after (``tokens_lost``). ``cache`` holds, for
        one plan() call, the slowdowns and the accuracies before."""
        total = 0.0
        for i, other in enumerate(inflight):
            key = ("slowdown", other.pool, pool, sequences)
            if key not in cache:
                cache[key] = slowdown(other.pool, pool, sequences, pools, self.latency)
            lost = tokens_lost(other, cache[key], duration_s)
            if lost <= 0:
                continue
            if ("before", i) not in cache:
                cache["before", i] = self._accuracy(other.model_id, other.method, other.branches,
                                                    other.deadline_tokens, other.max_tokens)
            before = cache["before", i]
            after = self._accuracy(other.model_id, other.method, other.branches,
                                   max(0.0, other.deadline_tokens - lost), other.max_tokens)
            if before is not None and after is not None:
                total += max(0.0, before - after)
        return total

    def plan(self, request: PlanRequest, pools: dict[str, PoolLoad],
             inflight: Sequence[InFlight] = ()) -> Plan:
        """Choose a plan for ``request`` given each pool's current load and, for an auto plan,
        the requests in flight (``inflight``: what a plan costs them counts against it).

        Fixed method and B are kept; only what is "auto" (None) is chosen. Pools without a
        profile get no prediction; then the least-loaded pool of the model runs the request
        with the defaults.

        Raises:
            ValueError: no pool serves the requested model (with the requested k).
            Infeasible: the budget cannot be met even with one branch on any pool; with
                ``admit_auto_if_fits``, for an auto request, also when no plan fits at the
                load now.
        """
        candidates = {name: load for name, load in pools.items()
                      if (request.model_id is None or load.model_id == request.model_id)
                      and (request.num_speculative_tokens is None
                           or load.num_speculative_tokens == request.num_speculative_tokens)}
        if not candidates:
            k = "" if request.num_speculative_tokens is None else \
                f" with num_speculative_tokens={request.num_speculative_tokens}"
            raise ValueError(f"no generator pool serves model {request.model_id or 'any'!r}{k}")
        auto = request.method is None or request.branches is None
        profiled = {n: p for n, p in candidates.items() if self.latency and self.latency.knows(n)}
        if not profiled:
            name = min(candidates, key=lambda n: candidates[n].inflight_branches / candidates[n].replicas)
            load = candidates[name]
            return Plan(pool=name, model_id=load.model_id, method=request.method or request.default_method,
                        num_branches=min(request.branches or request.default_branches, request.max_branches),
                        num_speculative_tokens=load.num_speculative_tokens, predicted_s=None,
                        expected_accuracy=None, auto=auto)

        if self.steady_state and auto and self.latency.calibration is not None:
            if self.split_stream and len(profiled) > 1:
                return self._plan_split(request, profiled)
            return self._plan_steady(request, profiled)
        best: tuple | None = None
        best_fits = False
        quickest_single: tuple[float, float, str] | None = None  # (harm to the hundredth, s, pool)
        # auto admission by fit: the least time one branch needs at the load now, as plans are
        # fitted (correction included, decoding at the slow end of the speed spread)
        least_fitted_s = math.inf
        check_fit_now = self.admit_auto_if_fits and auto
        rank_by_accuracy = self.rank_by_accuracy and auto
        considered = 0
        harms: dict[tuple[str, int], float] = {}  # per (pool, B): the same for every method
        cache: dict = {}
        weigh = self.weigh_inflight and auto and bool(inflight) and self.latency.calibration is not None
        for name, load in profiled.items():
            share = self._fair_share(load)
            # the 90th percentile of the pool's recent speed over its median (1: no spread known):
            # plans sized to the median speed sat at the budget's edge, and a third were cut
            slow = max(1.0, load.speed_spread[-1])
            methods = [request.method] if request.method else [
                m for m in AUTO_METHODS if request.scored_available or m not in SCORED]
            for method in methods:
                single_only = method == "single"
                if request.branches is not None:
                    counts = [1] if single_only else [request.branches]
                else:
                    counts = [1] if single_only else range(1, min(request.max_branches, share) + 1)
                for branches in counts:
                    considered += 1
                    planning_load = (self._planning_load(load, branches, self.symmetric_load)
                                     if request.branches is None else load)
                    prediction = self.latency.predict(name, planning_load, method, branches, request.max_tokens,
                                                      window=request.early_stop_window)
                    # Accuracy as the deadline leaves it: branches still running then are cut,
                    # and only the finished ones vote (a lone long branch is the risky plan);
                    # averaged over how much faster or slower than predicted branches have run.
                    accuracy = self._accuracy_over_spread(load, method, branches,
                                                          prediction.tokens_by(request.budget_s),
                                                          request.max_tokens)
                    fits = prediction.needed_s + (slow - 1) * prediction.parts_s.get("decode", 0.0) \
                        <= request.budget_s
                    # What the plan costs the requests in flight: its branches (one wave at a time
                    # with early stopping) slow theirs, with more sequences in their batch or a
                    # second engine on their device, and the deadline then leaves them fewer
                    # tokens. Not needed for a plan that does not fit once one does (but for one
                    # branch always: the 429 test below reads it).
                    harm = 0.0
                    if weigh and (fits or branches == 1 or best is None or not best_fits or rank_by_accuracy):
                        if (name, branches) not in harms:
                            busy_s = prediction.parts_s.get("prefill", 0.0) + prediction.parts_s.get("decode", 0.0)
                            sequences = wave_sizes(branches, request.early_stop_window)[0]
                            harms[name, branches] = self._harm(name, sequences, busy_s, pools, inflight, cache)
                        harm = harms[name, branches]
                    if branches == 1:
                        # 429 only when one branch cannot make it under today's load; weighing
                        # the requests in flight, on the pool where it costs them least (to the
                        # hundredth), the one the ranking below falls back to when nothing fits
                        now = self.latency.predict(name, self._admission_load(load), method, 1,
                                                   request.max_tokens)
                        single = (round(harm, 2), now.needed_s, name)
                        if quickest_single is None or single < quickest_single:
                            quickest_single = single
                        if check_fit_now:
                            # The burst-sized load the plans were sized on need not come: a
                            # request is turned away for the load in flight now only. With the
                            # correction, even on an idle pool: judged without it there (run
                            # ab), an idle pool whose correction said it would be cut let every
                            # request through, and the rule no longer fired.
                            fitted = prediction if planning_load is load else self.latency.predict(
                                name, load, method, 1, request.max_tokens, window=request.early_stop_window)
                            least_fitted_s = min(least_fitted_s, fitted.needed_s + (slow - 1)
                                                 * fitted.parts_s.get("decode", 0.0))
                    # Rank: fits the budget (the expected longest branch, decoding at the slow
                    # end of the pool's recent speed spread), then expected accuracy as the
                    # deadline leaves it less the harm (log B as a proxy when uncalibrated),
                    # then lower predicted latency. When nothing fits: the least harm (to the
                    # hundredth), then the quickest plan. Not by accuracy there: at the
                    # deadline's edge the table favours many branches, and under overload the
                    # requests in flight are already lost, so their harm cannot hold B back.
                    # Ranking by accuracy (``rank_by_accuracy``): the expected accuracy as the
                    # deadline leaves it already counts the branches it cuts, so it ranks every
                    # calibrated plan whose typical branch (the expected length of one, not the
                    # longest of B) would finish at the slow end of the spread; the fit test
                    # then breaks ties. Without that guard (run ad) the table's promise for
                    # many branches at a high load did not hold: auto decoded about 430 tokens
                    # a problem at 1 s (7 branches' worth), turned 121 of 500 requests away
                    # and fell 11 points behind.
                    typical_fits = False
                    if rank_by_accuracy and accuracy is not None:
                        typical_s = prediction.seconds_per_token * self.latency.expected_tokens(
                            load.model_id, 1, request.max_tokens)
                        typical_fits = (prediction.needed_s - prediction.parts_s.get("decode", 0.0)
                                        + slow * typical_s <= request.budget_s)
                    if typical_fits:
                        key = (1, accuracy - harm, fits, -prediction.needed_s)
                    else:
                        if fits:
                            value = accuracy - harm if accuracy is not None else math.log(branches) / 100
                        else:
                            value = -round(harm, 2)
                        key = (0, fits, value, -prediction.needed_s)
                    if best is None or key > best[0]:
                        best = (key, name, method, branches, prediction, accuracy, share, harm)
                        best_fits = fits
        if quickest_single is None:
            # Fixed B > 1 was asked for: check that one branch could still make it.
            quickest_single = (0.0, *self._quickest_single(request, profiled))
        _, single_s, _ = quickest_single
        self._check_one_branch(request, single_s, " where it costs the requests in flight least" if weigh else "")
        if check_fit_now and least_fitted_s > request.budget_s:
            wait_s = max(1.0, math.ceil(least_fitted_s - request.budget_s))
            raise Infeasible(f"latency_budget_s={request.budget_s:g} cannot be met: no plan fits at the "
                             f"load now (one branch needs {least_fitted_s:.2f}s at the slow end of the "
                             f"recent speeds)", wait_s, least_fitted_s)
        _, name, method, branches, prediction, accuracy, share, harm = best
        return self._make_plan(request, profiled[name], name, method, branches, prediction, accuracy, auto,
                               share, considered, harm=round(harm, 4) if weigh else None,
                               expected_cut=not best_fits and best[0][0] == 1)

    def _plan_steady(self, request: PlanRequest, profiled: dict[str, PoolLoad]) -> Plan:
        """The steady-state auto plan (``steady_state``): among the (pool, method, B) whose
        typical branch (the expected length of one) finishes when every request in flight
        lately runs the plan too (``_steady_load``), the one of highest expected accuracy as the
        deadline leaves it; no fit test for the longest branch (the accuracy prices the
        branches the deadline cuts). When none qualifies, the quickest. The B chosen last for
        the same kind of request is kept on the same pool unless another is expected to be
        more accurate by more than ``STEADY_SWITCH_ACCURACY``. Admission as for a fixed request
        of the chosen draft length (one branch on a pool of its model and k, at the load in
        flight now, without the latency correction).

        Raises:
            Infeasible: one branch is predicted to miss the budget on every pool of the chosen
                draft length.
        """
        ranked: dict[tuple[str, str, int], tuple] = {}
        for name, load in profiled.items():
            for (method, branches), entry in self._steady_candidates(request, name, load).items():
                ranked[name, method, branches] = entry
        choice = max(ranked, key=lambda c: ranked[c][0])
        # Hold the last choice's B against small swings of the live speed factors: a stream
        # that moves between near-equal plans is not the steady state it was planned for. Only
        # on the pool the ranking chose and among plans whose typical branch finishes. Held
        # across pools, where one branch finishes on either pool (so the two tie on accuracy)
        # nothing moves a stream off the slower one: in the first repeat of a run of b0214ba
        # (stopped, its plans not recorded) auto scored 36.2% at 1 s, as the fixed k = 0 row
        # did, against 41.0% for one branch on the speculating pool.
        kind = self._kind(request)
        held = self._steady_held.get(kind)
        if held in ranked and held[0] == choice[0] and ranked[held][0][0] and ranked[choice][0][0] and \
                ranked[choice][2] - ranked[held][2] <= STEADY_SWITCH_ACCURACY:
            choice = held
        if len(self._steady_held) >= STEADY_KINDS_KEPT and kind not in self._steady_held:
            self._steady_held.clear()
        self._steady_held[kind] = choice
        name, method, branches = choice
        _, prediction, accuracy, share = ranked[choice]
        load = profiled[name]
        # Admitted as a fixed request of the chosen draft length: one branch must make it on a
        # pool of that model and k. Judged on every pool, an idle pool the plan does not run on
        # let every request through (screening run s4 at 0.5 s: no 429, 437 of 500 answered cut,
        # where the fixed one-branch row of the same pool turned 86 away).
        single_s, _ = self._quickest_single(request, {
            n: p for n, p in profiled.items()
            if p.model_id == load.model_id and p.num_speculative_tokens == load.num_speculative_tokens})
        self._check_one_branch(request, single_s)
        return self._make_plan(request, load, name, method, branches, prediction, accuracy, True,
                               share, len(ranked), expected_cut=prediction.needed_s > request.budget_s)

    def _plan_split(self, request: PlanRequest, profiled: dict[str, PoolLoad]) -> Plan:
        """The steady-state auto plan over a stream that may be split (``split_stream``): the
        stream's requests (``_steady_stream``) all on one pool, as ``_plan_steady`` ranks them,
        or n on one pool and the rest on another, both decoding at once (each pool then has the
        others of its compute group busy beside it), each part running its own most accurate
        (method, B) among those whose typical branch finishes at its part's load. The state of
        highest mean expected accuracy as the deadline leaves it wins, the quicker as the
        profile predicts it (``_profiled_load``) on a tie, a split only where it beats the
        best whole stream by more than ``SPLIT_MARGIN_ACCURACY``. With ``pools_on_profile`` the
        states are priced on the profile alone (``_profiled_load``) and each part of the one
        chosen then keeps the profile's (method, B) unless the live speeds say otherwise
        (``_live_parts``). The last state for the same kind of request is held, on the same
        pools, unless another is expected to be more accurate by more than
        ``STEADY_SWITCH_ACCURACY``. This request
        runs the part whose pool has the fewest requests in flight below its share of the
        stream (among the parts whose pool admits it). With no state whose every part's
        typical branch finishes, as ``_plan_steady``. Admission as there, on each part's pool:
        429 only when one branch misses the budget on all of them.

        Why: a fixed (B, k) runs the whole stream on one pool; on a cluster of several pools
        (several GPUs, or two engines pinned to their own CPU cores) the others sit idle. A
        stream split over them decodes at a smaller batch on each, so its branches get more
        tokens before the deadline.

        Raises:
            Infeasible: one branch is predicted to miss the budget on every pool of every
                part's draft length.
        """
        stream = self._steady_stream(next(iter(profiled.values())))
        # Candidates per (pool, requests, co_busy) on the live loads or on the profile's. The
        # state (which pools, how many requests each) is chosen on the live ones, or with
        # pools_on_profile on the profile's, each part's (method, B) then checked on the live
        # ones (_live_parts).
        tables: dict[tuple[str, int, int, bool], dict[tuple[str, int], tuple]] = {}

        def table(name: str, requests: int, co_busy: int,
                  live: bool = not self.pools_on_profile) -> dict[tuple[str, int], tuple]:
            if (name, requests, co_busy, live) not in tables:
                load = profiled[name] if live else self._profiled_load(profiled[name])
                tables[name, requests, co_busy, live] = self._steady_candidates(request, name, load,
                                                                                requests, co_busy)
            return tables[name, requests, co_busy, live]

        def shared(a: str, b: str) -> int:
            group = profiled[a].compute_group
            return int(group is not None and group == profiled[b].compute_group)

        def best_part(name: str, requests: int, co_busy: int) -> tuple[str, int] | None:
            return self._best_finishing(table(name, requests, co_busy))

        # A state: its parts ((pool, requests, method, B), ...), each part's co_busy implied
        states: list[tuple[tuple[str, int, str, int], ...]] = []
        names = sorted(profiled)
        for name in names:
            part = best_part(name, stream, 0)
            if part is not None:
                states.append(((name, stream, *part),))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                co = shared(a, b)
                for n in range(1, stream):
                    part_a, part_b = best_part(a, n, co), best_part(b, stream - n, co)
                    if part_a is not None and part_b is not None:
                        states.append(((a, n, *part_a), (b, stream - n, *part_b)))

        def value(state) -> tuple[float, float] | None:
            """(mean expected accuracy, minus the slowest part's time as the profile predicts
            it); None when a part's typical branch no longer finishes."""
            co = shared(state[0][0], state[1][0]) if len(state) > 1 else 0
            total, slowest = 0.0, -math.inf
            for name, requests, method, branches in state:
                entry = table(name, requests, co).get((method, branches))
                if entry is None or not entry[0][0]:
                    return None
                total += requests * entry[2]
                slowest = max(slowest, table(name, requests, co, live=False)[method, branches][1].needed_s)
            return round(total / stream, 4), -slowest

        if not states:
            return self._plan_steady(request, profiled)
        choice = max(states, key=value)
        wholes = [s for s in states if len(s) == 1]
        if len(choice) > 1 and wholes:  # see SPLIT_MARGIN_ACCURACY
            whole = max(wholes, key=value)
            if value(choice)[0] - value(whole)[0] <= SPLIT_MARGIN_ACCURACY:
                choice = whole
        # The same plan on other pools (each part's requests, method and B alike) that is
        # predicted quicker wins unless it is more than STEADY_SWITCH_ACCURACY less accurate:
        # differences that small come from the pools' speed spreads, while the quicker pool has
        # the room the spread does not capture (fewer answers cut, fewer requests turned away).
        # Ranked on accuracy alone, in run z1 one branch on the plain pool (0.354 expected)
        # beat one on the speculating pool (0.348) for 350 requests in a row at 2 s and scored
        # 148 against 161 for that fixed row on the same problems; at 1 s the stream moved
        # between the two and got 139 requests turned away, the spec row 17. "Quicker" is the
        # profile's (``_profiled_load``), not the live speed factors': those swing between
        # rows (in run z6 spec's factor at 33 to 64 sequences read 1.35, 0.83 and 1.00 after
        # the 4 s auto rows), and the ties they decided sent the whole stream to the plain pool
        # there (seven or eight branches for 426, 375 and 230 of 500 problems), which the
        # profile and every fixed row of runs z5 and z6 measured slower: it cut 29, 34 and 12
        # answers where the fixed (8, 4) row cut 1, 0 and 3 on the same problems.
        shape = sorted(p[1:] for p in choice)
        best_value = value(choice)
        alike = [s for s in states if sorted(p[1:] for p in s) == shape
                 and best_value[0] - value(s)[0] <= STEADY_SWITCH_ACCURACY]
        choice = max(alike, key=lambda s: (value(s)[1], value(s)[0]))
        kind = self._kind(request)
        held = self._split_held.get(kind)
        # Held against small swings, as _plan_steady holds B: only on the same pools (a state
        # that moves between near-equal splits is not the steady state it was planned for)
        if held is not None and held != choice and sum(p[1] for p in held) == stream and \
                {p[0] for p in held} == {p[0] for p in choice}:
            kept = value(held)
            if kept is not None and value(choice)[0] - kept[0] <= STEADY_SWITCH_ACCURACY:
                choice = held
        if len(self._split_held) >= STEADY_KINDS_KEPT and kind not in self._split_held:
            self._split_held.clear()
        self._split_held[kind] = choice
        co = shared(choice[0][0], choice[1][0]) if len(choice) > 1 else 0
        if self.pools_on_profile:
            choice = self._live_parts(choice, co, lambda *part: table(*part, live=True))
        # This request joins the part furthest below its share of the stream now, or, where
        # one branch would miss the budget on that part's pool, the next part whose pool
        # admits it: turned away by the slower part's test alone (run y1 at 1 s, 89 of 500
        # requests on the plain part), auto got 181 requests turned away for good where one
        # branch on the speculating pool alone got 90.
        parts = sorted(choice, key=lambda p: (p[1] - profiled[p[0]].active_requests, p[1], p[0]), reverse=True)
        for i, (name, requests, method, branches) in enumerate(parts):
            load = profiled[name]
            single_s, _ = self._quickest_single(request, {
                n: p for n, p in profiled.items()
                if p.model_id == load.model_id and p.num_speculative_tokens == load.num_speculative_tokens})
            if single_s <= request.budget_s or i == len(parts) - 1:
                break
        self._check_one_branch(request, single_s)
        _, prediction, accuracy, share = table(name, requests, co, live=True)[method, branches]
        plan = self._make_plan(request, load, name, method, branches, prediction, accuracy, True, share,
                               sum(len(t) for t in tables.values()),
                               expected_cut=prediction.needed_s > request.budget_s)
        plan.stream_split = {p[0]: p[1] for p in choice}
        return plan

    def _live_parts(self, state: tuple[tuple[str, int, str, int], ...], co_busy: int,
                    live_table) -> tuple[tuple[str, int, str, int], ...]:
        """``state`` (chosen on the profile, each part with the profile's (method, B)) with each
        part's (method, B) checked on the live speeds (``live_table(pool, requests, co_busy)``:
        its candidates): the profile's where its typical branch finishes live and it is expected
        to be at most ``STEADY_SWITCH_ACCURACY`` less accurate than the best that does, else
        that best (the profile's where none finishes live). Anchored on the profile, not on the
        last choice: held against swings under 2 points, a B that a passing slowdown pushed down
        stayed down when the plan above it read better by less than that (run z9 at 4 s, first
        repeat: 8 branches, then 6 for seven requests at the row's start, then 7 for 469 of 500
        problems, 8 reading 1.6 to 1.9 points better; 319 right against 328 for the fixed 8)."""
        parts = []
        for name, requests, method, branches in state:
            ranked = live_table(name, requests, co_busy)
            best = self._best_finishing(ranked)
            profiled = (method, branches)
            if best is None or (profiled in ranked and ranked[profiled][0][0]
                                and ranked[best][2] - ranked[profiled][2] <= STEADY_SWITCH_ACCURACY):
                best = profiled
            parts.append((name, requests, *best))
        return tuple(parts)

    @staticmethod
    def _best_finishing(ranked: dict[tuple[str, int], tuple]) -> tuple[str, int] | None:
        """The best (method, B) of ``_steady_candidates``' ``ranked``; None when its typical
        branch does not finish (then none does: finishing ranks first)."""
        choice = max(ranked, key=lambda c: ranked[c][0])
        return choice if ranked[choice][0][0] else None

    @staticmethod
    def _kind(request: PlanRequest) -> tuple:
        """The kind of request a steady-state plan is held for: all that the plan depends on."""
        return (request.model_id, request.method, request.branches, request.num_speculative_tokens,
                round(request.budget_s, 3), request.max_tokens, request.early_stop_window, request.scored_available)

    def _steady_candidates(self, request: PlanRequest, name: str, load: PoolLoad,
                           requests: int | None = None, co_busy: int = 0) -> dict[tuple[str, int], tuple]:
        """Every (method, B) of ``request`` on pool ``name`` in a steady state of ``requests``
        requests running it there (None: every request in flight lately, ``_steady_load``) while
        ``co_busy`` other pools of its compute group decode beside it: (method, B) -> (key,
        prediction, accuracy, fair share), key = (typical branch finishes, expected accuracy as
        the deadline leaves it where it does, else 0, minus the predicted time). B is at most
        ``_steady_share``: the slots of the state the predictions price."""
        share = self._steady_share(load)
        # Without the latency correction: it is learned from the requests that finish, which
        # under a budget that cuts plans are the short problems, so it reads low where these
        # plans run (0.5 to 0.6 on the CPU testbed while the per-branch speed factors, which
        # cut branches teach too, read 1.6 at 32 sequences), and it sized them past what the
        # deadline left. The speed factors stay.
        uncorrected = self._admission_load(load)
        methods = [request.method] if request.method else [
            m for m in AUTO_METHODS if request.scored_available or m not in SCORED]
        candidates: dict[tuple[str, int], tuple] = {}
        for method in methods:
            if request.branches is not None:
                counts = [1] if method == "single" else [request.branches]
            else:
                counts = [1] if method == "single" else range(1, min(request.max_branches, share) + 1)
            for branches in counts:
                steady = self._steady_load(uncorrected, branches, requests, co_busy)
                prediction = self.latency.predict(name, steady, method, branches, request.max_tokens,
                                                  window=request.early_stop_window)
                accuracy = self._accuracy_over_spread(load, method, branches,
                                                      prediction.tokens_by(request.budget_s),
                                                      request.max_tokens)
                if accuracy is None:  # this model is not calibrated: the log B proxy
                    accuracy = math.log(branches) / 100 if prediction.needed_s <= request.budget_s else -1.0
                # The typical branch must finish: a plan whose branches the deadline cuts for
                # most problems loads the pool for nothing, and its cut branches (too short to
                # teach the speed factors) hide how slow it runs. Without this guard (screening
                # run s3) plans of 5 to 8 branches at 0.5 s answered 495 of 500 cut.
                typical_s = prediction.seconds_per_token * self.latency.expected_tokens(
                    load.model_id, 1, request.max_tokens)
                typical_fits = (prediction.needed_s - prediction.parts_s.get("decode", 0.0) + typical_s
                                <= request.budget_s)
                key = (typical_fits, round(accuracy, 4) if typical_fits else 0.0, -prediction.needed_s)
                candidates[method, branches] = (key, prediction, accuracy, share)
        return candidates

    @staticmethod
    def _check_one_branch(request: PlanRequest, single_s: float, where: str = "") -> None:
        """The 429 test: one branch predicted to take ``single_s`` must meet the budget.

        Raises:
            Infeasible: it does not, with Retry-After the whole seconds it is over (at least 1).
        """
        if single_s > request.budget_s:
            wait_s = max(1.0, math.ceil(single_s - request.budget_s))
            raise Infeasible(f"latency_budget_s={request.budget_s:g} cannot be met: one branch is "
                             f"predicted to take {single_s:.2f}s now{where}", wait_s, single_s)

    def _quickest_single(self, request: PlanRequest, profiled: dict[str, PoolLoad]) -> tuple[float, str]:
        """(seconds, pool) of the quickest one branch at the load in flight now, without the
        latency correction (``_admission_load``): what the 429 test reads."""
        quickest: tuple[float, str] | None = None
        for name, load in profiled.items():
            p = self.latency.predict(name, self._admission_load(load), request.method or "single", 1,
                                     request.max_tokens)
            if quickest is None or (p.needed_s, name) < quickest:
                quickest = (p.needed_s, name)
        return quickest

    def _make_plan(self, request: PlanRequest, load: PoolLoad, name: str, method: str, branches: int,
                   prediction, accuracy: float | None, auto: bool, share: int, considered: int,
                   harm: float | None = None, expected_cut: bool = False) -> Plan:
        """The chosen candidate as a ``Plan``, its reported prediction at the load in flight now
        (the load it was sized on, ``prediction``, may not come: the prediction error and the
        keeper's correction are measured on the load now)."""
        finish = self._finish_probability(load.model_id, prediction, request.budget_s, request.max_tokens)
        now = self.latency.predict(name, load, method, branches, request.max_tokens,
                                   window=request.early_stop_window)
        deadline_tokens = now.tokens_by(request.budget_s)
        return Plan(pool=name, model_id=load.model_id, method=method, num_branches=branches,
                    num_speculative_tokens=load.num_speculative_tokens, predicted_s=now.total_s,
                    expected_accuracy=accuracy, auto=auto, fair_share=share if auto else None,
                    candidates=considered, predicted_parts_s=now.parts_s,
                    branch_finish_probability=round(finish, 4),
                    planned_s=prediction.total_s if prediction.total_s != now.total_s else None,
                    latency_correction=round(load.latency_correction, 4),
                    seconds_per_token=now.seconds_per_token,
                    deadline_tokens=deadline_tokens if math.isfinite(deadline_tokens) else None,
                    harm_to_inflight=harm, expected_cut=expected_cut)

    @staticmethod
    def _profiled_load(load: PoolLoad) -> PoolLoad:
        """``load`` as the profile alone predicts it: without the live speed factors, the
        latency correction, the learned serving overhead and speed spread, with the configured
        compute-group slowdown (the load itself stays). What ties between pools are broken on,
        and with ``pools_on_profile`` what the pools are chosen on: both pools measured alike,
        in one sitting, where each pool learns the live parts from what it ran lately."""
        slowdown = load.group_slowdown if load.configured_group_slowdown is None else load.configured_group_slowdown
        return replace(load, speed_factors={}, band_seconds_per_token={}, latency_correction=1.0,
                       branch_overhead_s=0.0, speed_spread=(1.0,), group_slowdown=slowdown)

    @staticmethod
    def _admission_load(load: PoolLoad) -> PoolLoad:
        """The load the 429 test predicts one branch on: today's, without the latency
        correction. The correction is learned from admitted requests only; one that turned
        every request away (after a run of requests cut at the deadline, which count as over)
        would never see the evidence that lowers it again, so it sizes plans but does not
        decide admission."""
        return load if load.latency_correction == 1.0 else replace(load, latency_correction=1.0)

    @staticmethod
    def _planning_load(load: PoolLoad, branches: int, symmetric: bool = False) -> PoolLoad:
        """The load an auto plan of ``branches`` is predicted under: the branches in flight on
        the pool now, plus ``branches`` for each request expected to arrive (the recent number
        in flight over all pools, less those in flight now). In a burst the first requests
        find the pool idle; planned on that alone they would take the time the requests right
        behind them need, and those would get 429 (seen at concurrency 8: auto answered 9 of 60
        requests where B = 1 for all answered 60). Requests already admitted keep the branches
        they have: counting them at ``branches`` too made plans shrink for load that was not
        there.

        ``symmetric``: at least as if every request in flight lately (``recent_requests``) ran
        ``branches`` on this pool too, those in flight now included: the load a steady stream of
        requests planned alike settles at. Planned on the branches in flight now, each request
        takes what the others' plans leave free, and a plan ranked by accuracy grew to 12 to 19
        branches at 1 s on the testbed (run ak) where the best fixed plan runs 4.
        """
        in_flight = max(load.cluster_active_requests, load.active_requests)
        arriving = max(0, round(load.recent_requests) - in_flight)
        others = load.inflight_branches + arriving * branches
        if symmetric:
            others = max(others, round(load.recent_requests) * branches)
        if others == load.inflight_branches:
            return load
        return replace(load, inflight_branches=others)

    @staticmethod
    def _steady_stream(load: PoolLoad) -> int:
        """The requests of the steady stream: those in flight lately (``recent_requests``), or
        now if more, at least one."""
        return max(1, round(max(load.recent_requests, load.cluster_active_requests)))

    @classmethod
    def _steady_load(cls, load: PoolLoad, branches: int, requests: int | None = None,
                     co_busy: int = 0) -> PoolLoad:
        """The load a plan of ``branches`` is predicted under in the steady state: every request
        in flight lately (``recent_requests``, those now included; or ``requests`` of them, the
        pool's part of a split stream) running ``branches`` on this pool, whatever runs there
        now, with ``co_busy`` other pools of its compute group decoding beside it. The plans in
        flight now are the stream's own earlier choices; sized on them (as ``_planning_load``
        does), a request takes what they leave free, and a stream of such requests moves between
        plans instead of settling. For the same reason the other pools of its compute group
        count as idle (``co_busy`` 0): with the whole stream on this pool nothing of it runs
        beside it. Priced with the device share the stream's present pool leaves it, every other
        pool looked slower by the group's slowdown than the pool the stream was on, and the
        stream stayed there: in run t2 at 1 s it stayed on one branch of the plain pool (437 of
        500 requests, 37.6% against 41.0% for one branch of the speculating pool).
        """
        others = (cls._steady_stream(load) if requests is None else requests) * branches
        if others == load.inflight_branches and load.co_busy == co_busy:
            return load
        return replace(load, inflight_branches=others, co_busy=co_busy)

    @classmethod
    def _steady_share(cls, load: PoolLoad) -> int:
        """Branch slots each request of the steady stream may take: the pool's slots shared
        equally among the requests of the stream (``_steady_stream``) and this one, the load
        ``_steady_load`` prices for a whole stream; not the slots free now (``_fair_share``),
        which hold the stream's own earlier plans and any request answered whose release has
        not come. The part of a split stream gets no more: the slots its pool has beyond that
        are priced on how two busy pools of one device slow each other, the figure priced
        least well (learned 0.75 to 2.0 under the benchmark's load)."""
        slots = load.slots_per_replica * load.replicas
        return max(1, slots // (cls._steady_stream(load) + 1))

    @staticmethod
    def _fair_share(load: PoolLoad) -> int:
        """Branch slots one more request may take: an equal share of the pool's slots among
        the requests on it now or lately (``recent_requests``: a burst's next requests are
        coming), within the free slots while there are any."""
        slots = load.slots_per_replica * load.replicas
        free = slots - load.inflight_branches
        competitors = max(load.active_requests, round(load.recent_requests))
        equal = slots // (competitors + 1)
        return max(1, equal if free <= 0 else min(free, equal))
