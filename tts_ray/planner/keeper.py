"""The budget keeper: the cluster-wide ledger of branches in flight on every pool, the planner
over it, and the live refresh of the speed profile from finished branches (pure Python; the
``budget`` Serve deployment hosts one instance for all router replicas)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from tts_ray.config import AppConfig
from tts_ray.eval.stats import percentile
from tts_ray.planner.calibration import Calibration
from tts_ray.planner.early_stop import wave_sizes
from tts_ray.planner.latency import (
    LatencyModel,
    PoolLoad,
    band_factor,
    carried_factor,
    concurrency_band,
    live_seconds_per_token,
)
from tts_ray.planner.planner import InFlight, Plan, Planner, PlanRequest
from tts_ray.planner.profile import ClusterProfile

MIN_TOKENS_OBSERVED = 8  # shorter branches say more about queueing than about decode speed
SPEED_FACTOR_RANGE = (0.2, 5.0)  # one odd request must not wreck the model
# The learned merge margin: a high quantile of the time requests cut at their generation
# deadline took from there to their answer, over the most recent ones, within a range.
MARGIN_PERCENTILE = 95
MARGIN_WINDOW = 100
# Corrections fade when nothing refreshes them: a margin or a slow speed learned in a bad
# moment (start-up compilation, a burst) would otherwise reject every request, so no request
# would ever show that the moment has passed.
MARGIN_MAX_AGE_S = 60.0
SPEED_FACTOR_HALF_LIFE_S = 10.0  # without observations a speed factor halves its distance to its resting level
MARGIN_MIN_OBSERVED = 5
MAX_MERGE_MARGIN_S = 1.0
# The latency correction: the median of actual / predicted work over each pool's requests of
# the last CORRECTION_MAX_AGE_S (at most CORRECTION_WINDOW of them, at least
# CORRECTION_MIN_OBSERVED, else 1), within CORRECTION_RANGE. A median, because the requests the
# deadline cut are known only to have taken longer than predicted: they count as over, which
# is exact for the median while fewer than half are cut.
CORRECTION_WINDOW = 50
CORRECTION_MIN_OBSERVED = 10
CORRECTION_MAX_AGE_S = 60.0
CORRECTION_RANGE = (0.5, 2.0)
# The speed spread: each pool's recent branches' observed / predicted seconds per token (the
# prediction with the speed factor they were planned with), at SPREAD_QUANTILES over their
# median, from the last SPREAD_MAX_AGE_S (at most SPREAD_WINDOW branches, at least
# SPREAD_MIN_OBSERVED, else (1.0,)), each within SPREAD_RANGE. Branches the deadline stopped
# count too (their tokens in their time): they are the slow tail.
SPREAD_QUANTILES = (10, 30, 50, 70, 90)
SPREAD_WINDOW = 200
SPREAD_MIN_OBSERVED = 20
SPREAD_MAX_AGE_S = 60.0
SPREAD_RANGE = (0.25, 4.0)
# The live compute-group slowdown (router.learn_group_slowdown): each pool's branches that ran
# with none of its group's other pools busy (mean busy neighbours over their life at most
# ALONE_MAX_CO_BUSY) teach its alone speed per concurrency band (observed / profiled seconds
# per token, an EWMA); each branch that ran beside busy neighbours (at least
# SHARED_MIN_CO_BUSY of them on average) gives a sample (its speed / the alone speed of its
# band - 1) / its mean busy neighbours. With GROUP_SLOWDOWN_MIN_OBSERVED samples, the pool's
# group slowdown is the median of the last GROUP_SLOWDOWN_WINDOW, within GROUP_SLOWDOWN_RANGE.
ALONE_MAX_CO_BUSY = 0.1
SHARED_MIN_CO_BUSY = 0.5
GROUP_SLOWDOWN_WINDOW = 100
GROUP_SLOWDOWN_MIN_OBSERVED = 10
GROUP_SLOWDOWN_RANGE = (0.0, 3.0)
# The serving overhead per branch (router.learn_branch_overhead): each pool's finished branches
# of the last OVERHEAD_MAX_AGE_S (at most OVERHEAD_WINDOW, at least OVERHEAD_MIN_OBSERVED, else
# none) fitted by least squares as time less the profile's prefill = overhead + factor x the
# profile's decode time, the overhead within OVERHEAD_RANGE_S. Branches the deadline stopped are
# left out: their time is the deadline's, not their work's.
OVERHEAD_WINDOW = 200
OVERHEAD_MIN_OBSERVED = 30
OVERHEAD_MAX_AGE_S = 60.0
OVERHEAD_RANGE_S = (0.0, 2.0)
OVERHEAD_MIN_SPREAD = 0.1
# router.speed_carry "excess": the bands (up to 2 ** 15 sequences a replica) whose profiled
# seconds per token the keeper gives each pool's load (PoolLoad.band_seconds_per_token)
BANDS_WITH_EXCESS = 16
RECENT_REQUESTS_ALPHA = 0.2  # weight of each admission in the recent-requests average
# The recent number of requests is at least the most in flight at any admission of the last
# RECENT_PEAK_WINDOW_S: the first admissions of a burst find few in flight and would pull the
# average down just as the stream arrives (see BudgetKeeper._recent_peak).
RECENT_PEAK_WINDOW_S = 10.0
ERROR_WINDOW = 200  # recent requests the reported prediction error covers


@dataclass
class BranchObservation:
    """One finished branch as the router saw it."""

    num_tokens: int
    elapsed_s: float
    spec_accepted_tokens: int | None = None
    spec_verify_steps: int | None = None
    stopped: bool = False  # stopped at the deadline (finish_reason "deadline"), not finished


@dataclass
class _Admitted:
    pool: str
    branches: int
    concurrency: int
    admitted_at: float
    co_busy: int = 0  # its group's other pools busy when it was admitted
    predicted_work_s: float | None = None  # predicted prefill + decode, uncorrected
    predicted_fixed_s: float = 0.0  # predicted merge + scoring: not corrected, taken off the actual
    fits: bool = True  # the plan's prediction (corrected, with the reserve) was inside the budget
    speed_factor: float = 1.0  # the live factor on the profile's speed the plan was predicted with
    # Its progress, for what a later plan can cost it (planner.InFlight): the tokens a branch
    # has decoded by ``progress_at`` (from the decode's predicted start), advanced at the
    # pool's speed at each admission and release, up to its generation deadline
    tracked: bool = False
    model_id: str = ""
    method: str = "single"
    max_tokens: int = 0
    tokens_done: float = 0.0
    progress_at: float = 0.0
    generation_deadline_at: float = 0.0
    # the pool's running-branch integral when it was admitted, and the mean per replica over
    # its life, set at its release (see BudgetKeeper._integrate_running)
    running_integral_at: float = 0.0
    lived_concurrency: float | None = None
    # the pool's busy-neighbour integral when it was admitted (see BudgetKeeper._integrate_co_busy)
    co_busy_integral_at: float = 0.0
    first_wave: int = 0  # the branches it runs at once (all of them, or early stopping's first window)


class BudgetKeeper:
    """Admits requests (plans them and reserves their branches) and releases them.

    Args:
        config: the application config (pools, their replicas and slots).
        profile: measured speed profile, or None (no predictions: defaults, no 429).
        calibration: measured accuracy per (method, B), or None (larger B preferred).
        ewma_alpha: weight of each new observation in the live speed factor.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, config: AppConfig, profile: ClusterProfile | None = None,
                 calibration: Calibration | None = None, ewma_alpha: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.ewma_alpha, self.clock = config, ewma_alpha, clock
        self.latency = (LatencyModel(profile, calibration, merge_margin_s=config.router.merge_margin_s,
                                     max_search_steps=config.router.max_search_steps)
                        if profile is not None else None)
        self.weigh_inflight = config.router.plan_for_inflight
        self.planner = Planner(self.latency, weigh_inflight=self.weigh_inflight,
                               admit_auto_if_fits=config.router.auto_admission == "fitting_plan",
                               rank_by_accuracy=config.router.auto_ranking == "expected_accuracy",
                               symmetric_load=config.router.auto_load == "symmetric",
                               steady_state=config.router.auto_ranking == "steady_state",
                               split_stream=config.router.auto_ranking == "steady_split",
                               pools_on_profile=config.router.auto_pools == "profile")
        self.loads: dict[str, PoolLoad] = {}
        for pool in config.generators:
            replicas = pool.autoscaling.min_replicas if pool.autoscaling else pool.num_replicas
            self.loads[pool.name] = PoolLoad(
                model_id=pool.model_id,
                num_speculative_tokens=pool.speculative.num_speculative_tokens if pool.speculative else 0,
                replicas=max(1, replicas), slots_per_replica=pool.max_ongoing_requests,
                compute_group=pool.compute_group, group_slowdown=pool.compute_group_slowdown,
                configured_group_slowdown=pool.compute_group_slowdown)
        if config.router.speed_carry == "excess" and self.latency is not None:
            for name, load in self.loads.items():
                if self.latency.knows(name):
                    curve = self.latency.profile.pools[name].curve(load.num_speculative_tokens)
                    load.band_seconds_per_token = {band: curve.seconds_per_token_at(2 ** band)
                                                   for band in range(BANDS_WITH_EXCESS)}
        self.tokens_per_step: dict[str, float | None] = dict.fromkeys(self.loads)
        self.admitted: dict[str, _Admitted] = {}
        self.counts = {"admitted": 0, "rejected": 0, "released": 0}
        self.errors: list[float] = []  # (actual - predicted) / predicted of recent requests
        self.errors_by_pool: dict[str, list[float]] = {name: [] for name in self.loads}
        self.margin_floor_s = config.router.merge_margin_s
        self.adaptive_margin = config.router.adaptive_merge_margin
        self.needed_margins: list[tuple[float, float]] = []  # (when, generation deadline -> answer) of cut requests
        self.speed_updated_at = dict.fromkeys(self.loads, self.clock())
        # per pool and concurrency band: when a branch last taught the factor (see _fade_speed_factors)
        self.band_observed_at: dict[str, dict[int, float]] = {name: {} for name in self.loads}
        self.recent_requests = 0.0  # EWMA of the requests in flight (all pools) at admissions
        self.admission_actives: deque[tuple[float, int]] = deque()  # see _recent_peak
        self.correct_latency = config.router.latency_correction
        # per pool: (when, actual / predicted work) of recent requests; inf for one the deadline cut
        self.work_ratios: dict[str, list[tuple[float, float]]] = {name: [] for name in self.loads}
        self.plan_for_spread = config.router.plan_for_speed_spread
        # per pool: (when, observed / predicted seconds per token) of recent branches
        self.speed_residuals: dict[str, list[tuple[float, float]]] = {name: [] for name in self.loads}
        # per pool: the branches running (each request's first wave: early stopping books all
        # its branches but runs them a window at a time), their integral over time, and when it
        # was last moved on
        self.running_branches: dict[str, int] = dict.fromkeys(self.loads, 0)
        self.running_integral: dict[str, float] = dict.fromkeys(self.loads, 0.0)
        self.running_integrated_at: dict[str, float] = dict.fromkeys(self.loads, self.clock())
        # per pool: the integral over time of its group's other pools busy (co_busy), and when it
        # was last moved on; its alone speed per band and its recent slowdown samples (see
        # GROUP_SLOWDOWN_*), and the configured slowdown it falls back to
        self.co_busy_integral: dict[str, float] = dict.fromkeys(self.loads, 0.0)
        self.co_busy_integrated_at: dict[str, float] = dict.fromkeys(self.loads, self.clock())
        self.learn_slowdown = config.router.learn_group_slowdown
        self.alone_factors: dict[str, dict[int, float]] = {name: {} for name in self.loads}
        self.slowdown_samples: dict[str, deque[float]] = {
            name: deque(maxlen=GROUP_SLOWDOWN_WINDOW) for name in self.loads}
        self.configured_slowdown = {name: load.group_slowdown for name, load in self.loads.items()}
        self.learn_overhead = config.router.learn_branch_overhead
        # per pool: (when, the profile's decode seconds, seconds less the profile's prefill) of
        # recent finished branches (see OVERHEAD_*)
        self.overhead_samples: dict[str, deque[tuple[float, float, float]]] = {
            name: deque(maxlen=OVERHEAD_WINDOW) for name in self.loads}

    def _recent_peak(self, active: int) -> int:
        """The most requests in flight at an admission of the last ``RECENT_PEAK_WINDOW_S``,
        this one's ``active`` included. The stream a plan is sized for: the average alone lags
        a burst, because its first admissions find few in flight. In the planner benchmark each
        row's 8 clients start together after the last row's tail; their first admissions (0 to
        7 in flight) pulled the average from 7 to about 4, and at 2 s the auto row planned 6 to
        15 branches for its first 19 requests (run v3: 23 of its first 84 problems right, 34
        for the best fixed row, against par over the other 416)."""
        now, window = self.clock(), self.admission_actives
        # a sliding-window maximum: the deque holds the admissions no later one has matched,
        # so its counts fall from front to back and the front is the peak
        while window and window[-1][1] <= active:
            window.pop()
        window.append((now, active))
        while now - window[0][0] > RECENT_PEAK_WINDOW_S:
            window.popleft()
        return window[0][1]

    def _integrate_running(self, pool: str) -> float:
        """The integral over time of ``pool``'s running branches (branch-seconds) up to now.
        Called before every change of the count: between changes it is constant. A request's
        share of it over its life, per replica, is the concurrency its branches ran at
        (``_Admitted.lived_concurrency``), which the one at its admission can miss by far: the
        first request of a burst is admitted alone and runs among the whole burst."""
        now = self.clock()
        self.running_integral[pool] += self.running_branches[pool] * (now - self.running_integrated_at[pool])
        self.running_integrated_at[pool] = now
        return self.running_integral[pool]

    def _integrate_co_busy(self) -> None:
        """Move every pool's busy-neighbour integral (pool-seconds) on to now. Called before
        every change of ``co_busy`` (``_refresh_contention``): between changes it is constant.
        A request's share of it over its life is how many of its group's other pools decoded
        beside it on average, which the counts at its admission and release can miss both
        ways (a neighbour that starts and stops in between)."""
        now = self.clock()
        for name, load in self.loads.items():
            self.co_busy_integral[name] += load.co_busy * (now - self.co_busy_integrated_at[name])
            self.co_busy_integrated_at[name] = now

    def merge_margin_s(self) -> float:
        """The margin kept before the deadline for stopping branches, merging and answering:
        the configured one, raised to what cut requests have needed lately (their
        ``MARGIN_PERCENTILE``, over the last ``MARGIN_MAX_AGE_S``) when adaptive, at most
        ``MAX_MERGE_MARGIN_S``."""
        recent = [m for at, m in self.needed_margins if self.clock() - at <= MARGIN_MAX_AGE_S]
        if not self.adaptive_margin or len(recent) < MARGIN_MIN_OBSERVED:
            return self.margin_floor_s
        needed = percentile(recent, MARGIN_PERCENTILE)
        return min(max(self.margin_floor_s, needed), max(MAX_MERGE_MARGIN_S, self.margin_floor_s))

    def admit(self, request_id: str, request: PlanRequest, answered: Collection[str] = ()) -> Plan:
        """Plan ``request`` and reserve its branches on the chosen pool. ``answered``: requests
        already answered whose release may not have come yet; they do not count among the
        requests in flight that size the stream (``recent_requests``).

        Raises:
            ValueError: no pool serves the model; Infeasible: budget unreachable (429).
        """
        if self.weigh_inflight:
            self._advance()  # at the speed of the load before this request's
        # Fair shares look at the requests in flight lately, not only now: in a burst the
        # first request must not take every slot from the ones right behind it.
        # Without the requests already answered: a router sends each release in the background,
        # so the same client's next admission can come first, and the peak would hold the one
        # extra for RECENT_PEAK_WINDOW_S (a stream of 8 clients read as 9).
        active = sum(load.active_requests for load in self.loads.values()) - \
            sum(1 for answered_id in set(answered) if answered_id in self.admitted)
        self.recent_requests += RECENT_REQUESTS_ALPHA * (active - self.recent_requests)
        recent = max(self.recent_requests, self._recent_peak(active))
        for load in self.loads.values():
            load.recent_requests, load.cluster_active_requests = recent, active
        margin_s = self.merge_margin_s()
        if self.latency is not None:
            # plans keep the margin in force free before the deadline
            self.latency.deadline_reserve_s = margin_s - self.margin_floor_s
        self._fade_speed_factors()
        self._refresh_corrections()
        try:
            plan = self.planner.plan(request, self.loads, self._inflight() if self.weigh_inflight else ())
        except Exception:
            self.counts["rejected"] += 1
            raise
        load = self.loads[plan.pool]
        parts = plan.predicted_parts_s
        # The branches run at the concurrency of the load before them plus one wave (early
        # stopping runs them in waves of its window); the ledger still books all of them, so
        # slots stay reserved for the waves to come.
        first_wave = wave_sizes(plan.num_branches, request.early_stop_window)[0]
        concurrency = math.ceil((load.inflight_branches + first_wave) / load.replicas)
        integral = self._integrate_running(plan.pool)
        self.running_branches[plan.pool] += first_wave
        load.inflight_branches += plan.num_branches
        load.active_requests += 1
        # The work the prediction expects before the merge, without the correction: what the
        # correction is learned against (learned against itself it would chase its own tail).
        # Learned only where the prediction is of time, not of a worst case: without a
        # calibration a branch is predicted at max_tokens, and an early-stopping request as if
        # no wave were saved, so their ratios would say how short the answers were.
        # Nor from a plan chosen in the knowledge that the deadline would cut the longer
        # problems (``expected_cut``): its cuts would push the correction up for plans that do
        # fit (and turn auto requests away), and the ones it finishes are the short problems.
        learns = (plan.predicted_s is not None and self.latency is not None and not plan.expected_cut
                  and request.early_stop_window is None and self.latency.calibration is not None
                  and load.model_id in self.latency.calibration.models)
        work_s = ((parts.get("prefill", 0.0) + parts.get("decode", 0.0) + parts.get("overhead", 0.0))
                  / load.latency_correction
                  if learns else None)
        fits = plan.predicted_s is not None and \
            plan.predicted_s + (self.latency.deadline_reserve_s if self.latency else 0.0) <= request.budget_s
        self.admitted[request_id] = _Admitted(plan.pool, plan.num_branches, concurrency, self.clock(),
                                              co_busy=load.co_busy, predicted_work_s=work_s, fits=fits,
                                              predicted_fixed_s=parts.get("merge", 0.0) + parts.get("score", 0.0),
                                              speed_factor=self._planned_factor(plan.pool, concurrency),
                                              running_integral_at=integral, first_wave=first_wave)
        self._integrate_co_busy()
        self.admitted[request_id].co_busy_integral_at = self.co_busy_integral[plan.pool]
        if plan.seconds_per_token and plan.deadline_tokens is not None:
            entry = self.admitted[request_id]
            entry.tracked = True
            entry.model_id, entry.method, entry.max_tokens = plan.model_id, plan.method, request.max_tokens
            entry.progress_at = entry.admitted_at + parts.get("prefill", 0.0) + parts.get("overhead", 0.0)
            entry.generation_deadline_at = entry.progress_at + plan.deadline_tokens * plan.seconds_per_token
        self._refresh_contention()  # the chosen pool is busy now: its group's other pools slow down
        self.counts["admitted"] += 1
        plan.merge_margin_s = margin_s
        return plan

    def _seconds_per_token_now(self) -> dict[str, float]:
        """Per profiled pool: a branch's predicted seconds per token at the load in flight now
        (live speed, contention and latency correction included)."""
        if self.latency is None:
            return {}
        return {name: self.latency.seconds_per_token(name, load, math.ceil(max(1, load.inflight_branches)
                                                                           / load.replicas))
                for name, load in self.loads.items() if self.latency.knows(name)}

    def _advance(self) -> None:
        """Move every tracked request's progress to now at its pool's speed since the last
        admission or release (the load has not changed in between). Called before the load
        changes."""
        now, speeds = self.clock(), None
        for entry in self.admitted.values():
            until = min(now, entry.generation_deadline_at)
            if entry.tracked and until > entry.progress_at:
                speeds = speeds if speeds is not None else self._seconds_per_token_now()
                entry.tokens_done += (until - entry.progress_at) / speeds[entry.pool]
                entry.progress_at = until

    def _inflight(self) -> list[InFlight]:
        """The requests in flight that a new plan can still slow down (tracked, before their
        generation deadline), with the tokens their deadline leaves them at the speed now:
        what they have decoded plus what the rest of their window holds."""
        now, speeds = self.clock(), self._seconds_per_token_now()
        views = []
        for e in self.admitted.values():
            if not e.tracked or e.generation_deadline_at <= now:
                continue
            spt = speeds[e.pool]
            rest = (e.generation_deadline_at - max(now, e.progress_at)) / spt
            views.append(InFlight(pool=e.pool, model_id=e.model_id, method=e.method, branches=e.branches,
                                  max_tokens=e.max_tokens, seconds_per_token=spt,
                                  deadline_tokens=e.tokens_done + rest, window_s=e.generation_deadline_at - now))
        return views

    def release(self, request_id: str, observations: list[BranchObservation] | None = None,
                predicted_s: float | None = None, actual_s: float | None = None,
                needed_margin_s: float | None = None, cut: bool | None = None) -> None:
        """Free a request's branches and learn from its finished branches, from its time to the
        answer against the prediction (``actual_s``, None when the answer is partial), and, for
        a request whose generation was cut at its deadline (``cut``; None: whether
        ``needed_margin_s`` is given), from the time it then took to answer. Unknown ids are
        ignored (a release may be retried)."""
        cut = needed_margin_s is not None if cut is None else cut
        entry = self.admitted.pop(request_id, None)
        if entry is None:
            return
        if self.weigh_inflight:
            self._advance()  # the others ran beside this request until now
        if needed_margin_s is not None and needed_margin_s >= 0:
            self.needed_margins = (self.needed_margins + [(self.clock(), needed_margin_s)])[-MARGIN_WINDOW:]
        load = self.loads[entry.pool]
        # The branches ran beside the mean number of busy neighbours over their life: that is
        # what their speed is compared with (without a span of time, the mean of the counts at
        # admission and release). Contention is current: every change of a pool's in-flight
        # branches (admit, release) refreshes it.
        lived_s = self.clock() - entry.admitted_at
        co_busy = (entry.co_busy + load.co_busy) / 2
        if lived_s > 0:
            shared = self._integrate_running(entry.pool) - entry.running_integral_at
            entry.lived_concurrency = shared / lived_s / load.replicas
            self._integrate_co_busy()
            co_busy = (self.co_busy_integral[entry.pool] - entry.co_busy_integral_at) / lived_s
        self.running_branches[entry.pool] = max(0, self.running_branches[entry.pool] - entry.first_wave)
        load.inflight_branches = max(0, load.inflight_branches - entry.branches)
        load.active_requests = max(0, load.active_requests - 1)
        self._refresh_contention()
        self.counts["released"] += 1
        if predicted_s and actual_s is not None:
            error = (actual_s - predicted_s) / predicted_s
            self.errors = (self.errors + [error])[-ERROR_WINDOW:]
            self.errors_by_pool[entry.pool] = (self.errors_by_pool[entry.pool] + [error])[-ERROR_WINDOW:]
        for obs in observations or []:
            self._observe(entry, obs, co_busy)
        if not entry.predicted_work_s or (cut and not entry.fits):
            return  # a plan predicted over its budget was expected to be cut: that says nothing
        if cut or actual_s is not None:
            ratio = math.inf if cut else max(0.0, actual_s - entry.predicted_fixed_s) / entry.predicted_work_s
            self.work_ratios[entry.pool] = (self.work_ratios[entry.pool]
                                            + [(self.clock(), ratio)])[-CORRECTION_WINDOW:]

    def _refresh_corrections(self) -> None:
        """Set each pool's latency correction from its recent work ratios (see CORRECTION_*);
        1 when off, with too few of them, or once they are older than CORRECTION_MAX_AGE_S (a
        correction learned in a bad moment must not outlive it). Its speed spread likewise
        (SPREAD_*), and its serving overhead (OVERHEAD_*)."""
        now = self.clock()
        for name, load in self.loads.items():
            recent = [r for at, r in self.work_ratios[name] if now - at <= CORRECTION_MAX_AGE_S]
            if not self.correct_latency or len(recent) < CORRECTION_MIN_OBSERVED:
                load.latency_correction = 1.0
                continue
            # the lower median: with exactly half cut, the mean of the middle pair would be inf
            median = sorted(recent)[(len(recent) - 1) // 2]
            load.latency_correction = min(max(median, CORRECTION_RANGE[0]), CORRECTION_RANGE[1])
        for name, load in self.loads.items():
            load.speed_spread = self._speed_spread(name, now)
            if self.learn_overhead:  # an overhead learned in a bad moment expires with its branches
                load.branch_overhead_s = self._fitted_overhead(name)

    def _speed_spread(self, pool: str, now: float) -> tuple[float, ...]:
        """The pool's speed spread (see SPREAD_*): (1.0,) when off or with too few recent
        branches. Over the median, because the bias is the speed factors' and the latency
        correction's to remove; this is only how far the speed strays about it.

        A pool of a compute group with too few recent branches of its own takes the spread of
        the group's recent branches (all its pools'), as its speed factors fade to the group's
        (``_fade_speed_factors``): what strays the speed on a shared device (the other
        tenants, the machine) strays it for the idle pool too. With (1.0,), an idle pool's
        plans were priced without the slow tail that the busy pool's were priced with, and
        looked the more accurate for it."""
        if not self.plan_for_spread:
            return (1.0,)
        group = self.loads[pool].compute_group
        recent = [r for at, r in self.speed_residuals[pool] if now - at <= SPREAD_MAX_AGE_S]
        if len(recent) < SPREAD_MIN_OBSERVED and group is not None:
            recent = [r for name, load in self.loads.items() if load.compute_group == group
                      for at, r in self.speed_residuals[name] if now - at <= SPREAD_MAX_AGE_S]
        if len(recent) < SPREAD_MIN_OBSERVED:
            return (1.0,)
        median = percentile(recent, 50)
        return tuple(round(min(max(percentile(recent, q) / median, SPREAD_RANGE[0]), SPREAD_RANGE[1]), 4)
                     for q in SPREAD_QUANTILES)

    def _fade_speed_factors(self) -> None:
        """Move each pool's speed factors towards their resting level by the time since they
        last faded: half the distance per ``SPEED_FACTOR_HALF_LIFE_S``. A band's resting level
        is 1 (the profile), or, on a pool of a compute group, the mean of the same band's
        factors on the group's other pools that have one: pools time-sharing a device see
        alike what the device does to them (a machine slower than the profile's, another
        tenant), so an idle pool returns to the level its neighbours run at, not to a profile
        that may be of a faster machine. Faded to 1, the idle pool looked faster than the busy
        one beside it and took plans that it then ran slower, until its own factors rose
        again (on the CPU testbed about half the steady-state plans of screening run s4 went
        to the plain pool, whose fixed rows scored below the speculating pool's at every
        budget). Only factors a branch taught in the last half-life set a level: faded
        towards each other, two idle pools would keep a band's last reading for ever (in
        screening run s5 the stream then stayed on one branch at 1 s, where four did better).

        Without such neighbours, a band rests at the nearest band a branch taught in the last
        half-life (``carried_factor``: the highest one below it first), on its own pool, else
        on the group's other pools (their mean per band), and only with none at all at the
        profile: the machine that runs 3.7 times slower than the profile at 8 sequences does
        not run at the profile's speed at 16, nor at 4. Faded to the profile, the band of a
        larger plan that the stream had left made that plan look fast again within a minute,
        and the stream tried it, and the deadline cut it, every 40 s or so (run u2 at 1 s: 11
        plans of 7 to 9 branches among 443 of one branch, each slowing the requests beside it).
        With only the bands above carried (screening run v1 at 2 s), the bands below the
        stream's, faded to the profile, made the smaller plans look fast (the stream went from
        four branches on spec to one for 150 requests in a row, 37.2% against 42.2% for four),
        and the idle pool's bands that its neighbour had not taught made its larger plans look
        fast (four and five branches on the plain pool).
        """
        now = self.clock()
        live = {name: {band: f for band, f in load.speed_factors.items()
                       if now - self.band_observed_at[name].get(band, -math.inf) <= SPEED_FACTOR_HALF_LIFE_S}
                for name, load in self.loads.items()}
        for name, load in self.loads.items():
            fade = 0.5 ** ((now - self.speed_updated_at[name]) / SPEED_FACTOR_HALF_LIFE_S)
            neighbours = [live[other] for other, o in self.loads.items()
                          if other != name and load.compute_group is not None
                          and o.compute_group == load.compute_group]
            # the group's other pools' live factors, averaged per band
            group_live = {band: sum(f[band] for f in neighbours if band in f) / sum(band in f for f in neighbours)
                          for band in {b for f in neighbours for b in f}}
            faded = {}
            for band, f in load.speed_factors.items():
                if band in group_live:
                    rest = group_live[band]
                else:
                    carried = carried_factor(live[name], band, band_seconds_per_token=load.band_seconds_per_token)
                    if carried is None:
                        carried = carried_factor(group_live, band, band_seconds_per_token=load.band_seconds_per_token)
                    rest = 1.0 if carried is None else carried
                faded[band] = rest + (f - rest) * fade
            load.speed_factors = faded
            self.speed_updated_at[name] = now

    def _refresh_contention(self) -> None:
        """Count, for every pool, the other pools of its compute group with branches in flight."""
        self._integrate_co_busy()  # up to now at the old counts
        for name, load in self.loads.items():
            load.co_busy = 0 if load.compute_group is None else sum(
                1 for other, o in self.loads.items()
                if other != name and o.compute_group == load.compute_group and o.inflight_branches > 0)

    def _planned_factor(self, pool: str, concurrency: int) -> float:
        """The live factor on the profile the latency model applies at ``concurrency`` now
        (:func:`~tts_ray.planner.latency.live_seconds_per_token` over the profile's value):
        what the speed spread measures branches against."""
        if self.latency is None or not self.latency.knows(pool):
            return 1.0
        load = self.loads[pool]
        curve = self.latency.profile.pools[pool].curve(load.num_speculative_tokens)
        return live_seconds_per_token(curve, load, concurrency) / curve.seconds_per_token_at(concurrency)

    def _observe(self, entry: _Admitted, obs: BranchObservation, co_busy: float = 0.0) -> None:
        """Learn from one finished branch of ``entry``, which ran beside ``co_busy`` busy pools of
        its compute group on average: the pool's tokens per step, its group slowdown
        (``_learn_slowdown``) and the speed factor of the band it ran in."""
        load = self.loads[entry.pool]
        if obs.spec_verify_steps:
            tps = (obs.spec_verify_steps + (obs.spec_accepted_tokens or 0)) / obs.spec_verify_steps
            old = self.tokens_per_step[entry.pool]
            self.tokens_per_step[entry.pool] = tps if old is None else old + self.ewma_alpha * (tps - old)
        # A short branch that finished says more about queueing than about decode speed; one
        # the deadline stopped short is the evidence that the plan ran slow, and teaches: left
        # out, a plan whose branches were all stopped within a few tokens taught nothing, and
        # the factor of its band kept the (faster) profile's reading, so the stream stayed on
        # it (run u1 at 1 s: six branches each, 412 of 500 answers cut, 3.5 tokens a branch).
        if self.latency is None or not self.latency.knows(entry.pool) or \
                (obs.num_tokens < MIN_TOKENS_OBSERVED and not obs.stopped) or obs.num_tokens < 1:
            return
        curve = self.latency.profile.pools[entry.pool].curve(load.num_speculative_tokens)
        lived = max(1, round(entry.lived_concurrency)) if entry.lived_concurrency else entry.concurrency
        contention = 1 + load.group_slowdown * co_busy
        beyond_prefill_s = obs.elapsed_s - curve.prefill_s * contention
        if self.learn_overhead and not obs.stopped:
            # the profile's decode time without contention: the line is fitted across lengths
            # and batch sizes, and a slowdown that moves (learned) must not pass for one
            self._learn_overhead(entry.pool, obs.num_tokens * curve.seconds_per_token_at(lived), beyond_prefill_s)
        # the decode speed without the serving overhead: the factors would otherwise carry it
        # per token, heavily where a token is quick (few sequences) and lightly where it is slow
        observed_spt = max(beyond_prefill_s - load.branch_overhead_s, 1e-6) / obs.num_tokens
        if self.learn_slowdown and load.compute_group is not None:
            self._learn_slowdown(entry.pool, observed_spt / curve.seconds_per_token_at(lived), lived, co_busy)
            contention = 1 + load.group_slowdown * co_busy  # the slowdown may have moved

        def ratio_at(concurrency: float) -> float:
            predicted_spt = curve.seconds_per_token_at(concurrency) * contention
            return min(max(observed_spt / predicted_spt, SPEED_FACTOR_RANGE[0]), SPEED_FACTOR_RANGE[1])

        # The speed factor is what neither contention nor concurrency explains: compare with
        # the profile at the device share and at the concurrency the branch had over its life,
        # not at its admission. Compared at admission, the first requests of a burst (admitted
        # with few branches in flight, run among all of them) taught their band a slow factor
        # the steady stream does not have: in screening at 3 s (2026-12-03) the first branches
        # of a fixed four-branch row, admitted at 4 to 12 sequences, read 3 to 5 times the
        # profile there, and 1.6 to 2.3 times it at the 30 or so they ran among.
        ratio = ratio_at(lived)
        self._fade_speed_factors()
        current = load.speed_factor_at(lived)  # a new band starts from its neighbours or 1
        # The spread is of the plan's own prediction (at its admission's concurrency, with the
        # factor it was predicted with; not the band's now: the request's earlier branches and
        # the fading have moved it since): how far off the plan's speed was.
        self.speed_residuals[entry.pool] = (self.speed_residuals[entry.pool]
                                            + [(self.clock(), ratio_at(entry.concurrency) / entry.speed_factor)]
                                            )[-SPREAD_WINDOW:]
        band = concurrency_band(lived)
        load.speed_factors[band] = current + self.ewma_alpha * (ratio - current)
        self.band_observed_at[entry.pool][band] = self.clock()

    def _learn_overhead(self, pool: str, profile_decode_s: float, beyond_prefill_s: float) -> None:
        """Add one finished branch of ``pool`` (the profile's decode time for its tokens at its
        concurrency; its time less the profile's prefill) and refit the pool's
        ``branch_overhead_s`` (see OVERHEAD_*): the intercept of the least-squares line through
        the recent branches, within OVERHEAD_RANGE_S; 0 with too few of them or too little
        spread in their decode times (an intercept needs branches of different lengths: a
        standard deviation of at least OVERHEAD_MIN_SPREAD of the mean)."""
        now = self.clock()
        samples = self.overhead_samples[pool]
        samples.append((now, profile_decode_s, beyond_prefill_s))
        while samples and now - samples[0][0] > OVERHEAD_MAX_AGE_S:
            samples.popleft()
        self.loads[pool].branch_overhead_s = self._fitted_overhead(pool)

    def _fitted_overhead(self, pool: str) -> float:
        """The overhead the recent branches of ``pool`` fit (``_learn_overhead``), without adding one."""
        now = self.clock()
        recent = [(x, y) for at, x, y in self.overhead_samples[pool] if now - at <= OVERHEAD_MAX_AGE_S]
        if len(recent) < OVERHEAD_MIN_OBSERVED:
            return 0.0
        mean_x = sum(x for x, _ in recent) / len(recent)
        mean_y = sum(y for _, y in recent) / len(recent)
        var_x = sum((x - mean_x) ** 2 for x, _ in recent)
        if var_x <= 0 or math.sqrt(var_x / len(recent)) < OVERHEAD_MIN_SPREAD * mean_x:
            return 0.0
        slope = sum((x - mean_x) * (y - mean_y) for x, y in recent) / var_x
        # a slope outside the speed factors' range is noise (a handful of lengths): the
        # overhead is then what the mean branch has beyond the profile at the nearest bound
        slope = min(max(slope, SPEED_FACTOR_RANGE[0]), SPEED_FACTOR_RANGE[1])
        return min(max(mean_y - slope * mean_x, OVERHEAD_RANGE_S[0]), OVERHEAD_RANGE_S[1])

    def _learn_slowdown(self, pool: str, ratio: float, concurrency: int, co_busy: float) -> None:
        """Learn ``pool``'s group slowdown from one branch that decoded at ``ratio`` times its
        profiled seconds per token at ``concurrency`` per replica, beside ``co_busy`` busy pools of
        its group on average (see GROUP_SLOWDOWN_*): alone, it teaches the pool's alone speed
        in its band; beside busy neighbours, its speed over the alone speed of its band (or the
        bands next to it, or the nearest below) is a sample. Why: the configured slowdown is a
        guess, and a wrong one is not corrected by the speed factors. They divide it out of
        what a branch beside busy neighbours teaches, so with too small a slowdown every band
        the split stream teaches reads slow for the pool alone too, and the single-pool plans
        look slower than they run: on the CPU testbed (run y2 at 1 s) each pool read about 2
        times the profile beside the other with 0.3 configured, 1.5 to 1.8 alone."""
        ratio = min(max(ratio, SPEED_FACTOR_RANGE[0]), SPEED_FACTOR_RANGE[1])
        band = concurrency_band(concurrency)
        alone = self.alone_factors[pool]
        if co_busy <= ALONE_MAX_CO_BUSY:
            alone[band] = ratio if band not in alone else alone[band] + self.ewma_alpha * (ratio - alone[band])
            return
        reference = band_factor(alone, band)
        if co_busy < SHARED_MIN_CO_BUSY or reference is None:
            return
        samples = self.slowdown_samples[pool]
        samples.append((ratio / reference - 1) / co_busy)
        if len(samples) >= GROUP_SLOWDOWN_MIN_OBSERVED:
            self.loads[pool].group_slowdown = min(max(percentile(list(samples), 50), GROUP_SLOWDOWN_RANGE[0]),
                                                  GROUP_SLOWDOWN_RANGE[1])

    def set_replicas(self, pool: str, replicas: int) -> None:
        """Follow autoscaling: the running replica count of ``pool``."""
        if pool in self.loads and replicas >= 1:
            self.loads[pool].replicas = replicas

    def status(self) -> dict[str, Any]:
        """In-flight branches, live speed factors, latency corrections and the latency model's
        recent error."""
        self._refresh_corrections()  # expired ones read 1, as the next plan would use
        return {
            "pools": {name: {"model_id": l.model_id, "num_speculative_tokens": l.num_speculative_tokens,
                             "replicas": l.replicas, "slots": l.slots_per_replica * l.replicas,
                             "inflight_branches": l.inflight_branches, "active_requests": l.active_requests,
                             # at the concurrency in flight now (one sequence when idle)
                             "speed_factor": round(l.speed_factor_at(math.ceil(l.inflight_branches / l.replicas)), 4),
                             "speed_factor_by_concurrency": {f"<={2 ** band}": round(f, 4)
                                                             for band, f in sorted(l.speed_factors.items())},
                             "compute_group": l.compute_group, "contention": l.contention,
                             # learned (router.learn_group_slowdown) or the configured one
                             "group_slowdown": round(l.group_slowdown, 4),
                             "group_slowdown_samples": len(self.slowdown_samples[name]),
                             "latency_correction": round(l.latency_correction, 4),
                             # learned (router.learn_branch_overhead), 0 when none
                             "branch_overhead_s": round(l.branch_overhead_s, 4),
                             "speed_spread": list(l.speed_spread),
                             "tokens_per_step": self.tokens_per_step[name],
                             "prediction_error": _error_summary(self.errors_by_pool[name])}
                      for name, l in self.loads.items()},
            "profiled": self.latency is not None,
            "calibrated": bool(self.latency and self.latency.calibration),
            "counts": dict(self.counts),
            "merge_margin_s": round(self.merge_margin_s(), 4),
            "early_stop_rule": {"window": self.config.router.early_stop_window,
                                "confidence": self.config.router.early_stop_confidence,
                                "criterion": self.config.router.early_stop_criterion},
            "prediction_error": _error_summary(self.errors),
        }


def _error_summary(errors: list[float]) -> dict[str, Any]:
    """Relative errors (actual - predicted) / predicted: count, median |error|, mean error."""
    ordered = sorted(abs(e) for e in errors)
    return {"requests": len(errors),
            "median_abs": ordered[len(ordered) // 2] if ordered else None,
            "mean_signed": sum(errors) / len(errors) if errors else None}
