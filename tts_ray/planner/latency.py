"""The latency model: predicted wall time of a plan (pool, method, B branches) from the pool's
speed profile, the calibrated branch lengths and the load already on the pool."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tts_ray.planner.calibration import Calibration
from tts_ray.planner.early_stop import wave_sizes
from tts_ray.planner.profile import ClusterProfile

SCORED = frozenset({"weighted_majority", "best_of_n", "beam_search", "dvts"})
SEARCH = frozenset({"beam_search", "dvts"})


def concurrency_band(concurrency: int) -> int:
    """The band of the live speed correction: ceil(log2(sequences per replica)), so 1, 2,
    3-4, 5-8, ... sequences share a factor."""
    return max(0, math.ceil(math.log2(max(1, concurrency))))


@dataclass
class PoolLoad:
    """What the planner knows about a pool right now."""

    model_id: str
    num_speculative_tokens: int
    replicas: int
    slots_per_replica: int
    inflight_branches: int = 0
    active_requests: int = 0
    recent_requests: float = 0.0  # requests in flight (all pools) lately: EWMA at admissions, at least their recent peak
    cluster_active_requests: int = 0  # requests in flight on all pools now (set by the keeper)
    # observed / profiled seconds per token (EWMA of live branches), per concurrency band
    speed_factors: dict[int, float] = field(default_factory=dict)
    compute_group: str | None = None  # pools of one group share a device (config.compute_group)
    co_busy: int = 0  # other pools of the group with branches in flight (set by the keeper)
    group_slowdown: float = 1.0  # what each busy co-group pool adds (config.compute_group_slowdown)
    # the configured compute_group_slowdown, kept while group_slowdown follows the learned one
    # (None: group_slowdown is the configured one)
    configured_group_slowdown: float | None = None
    # median actual / predicted work of the pool's recent requests (set by the keeper): what the
    # speed factors, learned branch by branch, still leave wrong about whole requests
    latency_correction: float = 1.0
    # live decode speed's spread (set by the keeper): recent branches' observed / predicted
    # seconds per token at SPREAD_QUANTILES, over their median; (1.0,): the prediction alone
    speed_spread: tuple[float, ...] = (1.0,)
    # the profile's seconds per token at the top of each concurrency band (2 ** band sequences;
    # set by the keeper with router.speed_carry "excess"): a factor carried up to a band nothing
    # taught keeps the excess seconds per token of the band it comes from (``carried_factor``);
    # empty: the factor itself is carried
    band_seconds_per_token: dict[int, float] = field(default_factory=dict)
    # the serving stack's seconds per branch beyond the profile's prefill and decode (set by the
    # keeper with router.learn_branch_overhead; 0: none learned): once per wave of branches
    branch_overhead_s: float = 0.0

    def speed_factor_at(self, concurrency: int) -> float:
        """The live correction at ``concurrency`` sequences per replica: the factor learned in
        its band (``concurrency_band``); else the mean of the factors learned in the bands
        right next to it; else the highest learned band's below it, carried up
        (``carried_factor``); else 1 (the profile). Banded because the profile's error depends on the load: a factor
        learned while 16-branch requests overran the engine (4.8x on the testbed) says nothing
        about one branch alone, and as one number it sent the next requests to the other pool.
        For the same reason a band never borrows from a band two or more steps *above* it: the
        profile is the better guess there. Carried upwards because a machine slower than the
        profile at 8 sequences is not faster at 64: read at the profile's speed, the unlearned
        bands made the plans that would run there look fast. (A band taught once and left
        fades otherwise: ``BudgetKeeper._fade_speed_factors``.)"""
        factor = band_factor(self.speed_factors, concurrency_band(concurrency), self.band_seconds_per_token)
        return 1.0 if factor is None else factor

    @property
    def contention(self) -> float:
        """The factor on this pool's profiled time while it decodes: 1, plus
        ``group_slowdown`` for each busy pool of its compute group (with 1.0, n engines
        time-sharing a device each get 1/n of it)."""
        return 1 + self.group_slowdown * self.co_busy


def band_factor(factors: dict[int, float], band: int,
                band_seconds_per_token: dict[int, float] | None = None) -> float | None:
    """What ``band`` reads among ``factors`` (band -> factor) as ``PoolLoad.speed_factor_at``
    reads them: its own; else the mean of the bands right next to it; else the highest band's
    below it, carried up (``carried_factor``); None when there is none."""
    if band in factors:
        return factors[band]
    neighbours = [factors[b] for b in (band - 1, band + 1) if b in factors]
    if neighbours:
        return sum(neighbours) / len(neighbours)
    return carried_factor(factors, band, from_above=False, band_seconds_per_token=band_seconds_per_token)


def carried_factor(factors: dict[int, float], band: int, from_above: bool = True,
                   band_seconds_per_token: dict[int, float] | None = None) -> float | None:
    """The factor of the band nearest ``band`` among ``factors`` (band -> factor): the highest
    one below it, else (with ``from_above``) the lowest one above it; None when there is none:
    what a band nothing has taught (lately) reads. Below first because a slow single branch
    says more about a batch above it (the machine is slower) than a batch that overran the
    engine says about one branch alone.

    With ``band_seconds_per_token`` (the profile's seconds per token at each band's top), a
    factor carried up keeps its band's excess seconds per token over the profile, not its
    ratio: 1 + (factor - 1) x the profile's time per token there / at ``band``. The serving
    stack adds time to every decode step (the router, Ray Serve, streaming each token back)
    that the profile of the bare engine does not have, and it weighs less in the longer steps
    of a larger batch: on the CPU testbed (run y2 at 4 s, the band each fixed row ran in) one
    branch a request read 1.48 (spec) and 1.61 (plain) times the profile at 5 to 8 sequences,
    eight branches 0.83 and 0.78 at 33 to 64. Carried as a ratio from one branch's band (1.5),
    four branches on spec do not finish at 2 s in the steady-state ranking, and the stream
    kept one branch (runs y1, y2), where the fixed four scored 1.6 and 5 points more. A factor
    carried down keeps its ratio (the excess of a batch that overran the engine would make
    one branch look several times slower)."""
    below = [b for b in factors if b < band]
    if below:
        source = max(below)
        spt = band_seconds_per_token or {}
        if source in spt and band in spt and spt[band] > 0:
            return 1 + (factors[source] - 1) * spt[source] / spt[band]
        return factors[source]
    above = [b for b in factors if b > band] if from_above else []
    return factors[min(above)] if above else None


def live_seconds_per_token(curve, load: PoolLoad, concurrency: int) -> float:
    """Seconds per token of one sequence among ``concurrency`` per replica: the profile's
    curve times the live speed factor of the band, made non-decreasing in concurrency (the
    largest value at ``concurrency``, at the top of every band below it and at every profiled
    concurrency below it). More sequences
    in a batch never make each one faster, but factors learned band by band can say so (a
    run measured 1.39x in 5-8 and 0.98x in 9-16): read raw, a plan of 12 branches was then
    predicted quicker than one of 4, and under overload, where no plan fit and the planner
    takes the quickest, it chose 10 to 29 branches, nearly all cut at the deadline."""
    points = [concurrency, *(2 ** band for band in range(concurrency_band(concurrency))),
              *(c for c in curve.concurrency if c < concurrency)]
    return max(curve.seconds_per_token_at(c) * load.speed_factor_at(c) for c in points)


@dataclass
class Prediction:
    """A predicted latency and its parts (seconds)."""

    total_s: float
    parts_s: dict[str, float] = field(default_factory=dict)
    concurrency_per_replica: int = 1
    expected_tokens: float = 0.0
    seconds_per_token: float = 0.0  # per branch, at that concurrency, live correction included
    # (in waves: the whole decode time over one branch's tokens)
    reserve_s: float = 0.0  # kept free before the deadline beyond the expected merge time
    waves: int = 1  # branch waves run one after another (early stopping's windows)

    @property
    def needed_s(self) -> float:
        """What the plan needs out of the budget: the predicted time to the answer plus the
        reserve for answering after a cut (``total_s`` is what a client waits when no branch
        is cut, the figure the prediction error compares with)."""
        return self.total_s + self.reserve_s

    def tokens_by(self, budget_s: float) -> float:
        """Decode tokens one branch gets before generation must stop to meet ``budget_s``
        (everything but decoding, the reserve included, is taken off the budget first)."""
        fixed_s = self.needed_s - self.parts_s.get("decode", 0.0)
        if self.seconds_per_token <= 0:
            return math.inf
        return max(0.0, budget_s - fixed_s) / self.seconds_per_token


class LatencyModel:
    """``predict`` = (prefill + E[longest branch] x seconds-per-token(concurrency per replica)
    x contention x live speed factor (at that concurrency)) x the pool's latency correction +
    reward scoring + merge time (the configured merge margin); ``deadline_reserve_s`` (set by
    the keeper: its learned margin beyond the configured one) is kept free before the deadline
    but is not part of the predicted latency.

    Contention is the number of engines decoding on the pool's device: pools of one compute
    group (e.g. two pools on one node's CPU cores) time-share it, and the profile measured each
    engine alone.

    Concurrency per replica counts the branches already in flight on the pool plus the new
    ones, spread evenly (Serve balances branches over replicas). Without a calibration the
    length is ``max_tokens`` (the worst case). Search methods generate step by step: their
    prediction adds one scoring call per search step.
    """

    def __init__(self, profile: ClusterProfile, calibration: Calibration | None = None,
                 merge_margin_s: float = 0.05, max_search_steps: int = 12) -> None:
        self.profile, self.calibration = profile, calibration
        self.merge_margin_s, self.max_search_steps = merge_margin_s, max_search_steps
        self.deadline_reserve_s = 0.0
        self._expected_tokens: dict[tuple[str, int, int], float] = {}  # the calibration is fixed

    def knows(self, pool: str) -> bool:
        return pool in self.profile.pools

    def expected_tokens(self, model_id: str, branches: int, max_tokens: int) -> float:
        """E[longest of ``branches`` branches] in tokens from the calibrated lengths (``max_tokens``
        uncalibrated). Memoized: the planner asks for every candidate of every request, and over
        a sample of thousands of lengths this was 98% of an auto plan's time (100 ms a plan on the
        CPU testbed, 0.7 ms memoized), which the single keeper spends one request at a time."""
        key = (model_id, branches, max_tokens)
        if key not in self._expected_tokens:
            models = self.calibration.models if self.calibration else {}
            self._expected_tokens[key] = (models[model_id].expected_max_length(branches, max_tokens)
                                          if model_id in models else float(max_tokens))
        return self._expected_tokens[key]

    def seconds_per_token(self, pool: str, load: PoolLoad, concurrency: int) -> float:
        """A branch's predicted seconds per token on ``pool`` among ``concurrency`` sequences
        per replica: the live curve (``live_seconds_per_token``) x contention x the pool's
        latency correction.

        Raises:
            KeyError: the pool is not in the profile.
        """
        curve = self.profile.pools[pool].curve(load.num_speculative_tokens)
        return live_seconds_per_token(curve, load, concurrency) * load.contention * load.latency_correction

    def predict(self, pool: str, load: PoolLoad, method: str, branches: int, max_tokens: int,
                window: int | None = None) -> Prediction:
        """Predicted latency of ``branches`` branches of ``method`` on ``pool``; with
        ``window`` (early stopping), the branches run in waves of ``window``, one after
        another, and the prediction is for every wave running (the vote never settling): each
        wave its own prefill and its own longest branch, at the concurrency one wave adds.
        The merge and the reward scoring come once, after the last wave.

        Raises:
            KeyError: the pool is not in the profile.
        """
        curve = self.profile.pools[pool].curve(load.num_speculative_tokens)
        waves = wave_sizes(branches, None if method in SEARCH else window)
        prefill_s = decode_s = overhead_s = 0.0
        for size in waves:
            concurrency = math.ceil((load.inflight_branches + size) / max(1, load.replicas))
            decode_s += (self.expected_tokens(load.model_id, size, max_tokens)
                         * self.seconds_per_token(pool, load, concurrency))
            prefill_s += curve.prefill_s * load.contention * load.latency_correction
            overhead_s += load.branch_overhead_s * load.latency_correction
        # tokens_by() reads the deadline in tokens of the plan's longest branch, which the
        # accuracy table cuts all B branches at. In waves that is an approximation: the decode
        # time of all the waves is spread over the longest branch of B as if it decoded slower,
        # so a plan that fits exactly reads the table where an all-at-once plan of B would, and
        # a deadline leaving half the decode time cuts every branch at half (in truth the early
        # waves would finish and the last be cut).
        tokens = self.expected_tokens(load.model_id, branches, max_tokens)
        concurrency = math.ceil((load.inflight_branches + waves[0]) / max(1, load.replicas))  # the first wave's
        parts = {"prefill": prefill_s, "decode": decode_s, "merge": self.merge_margin_s}
        if overhead_s > 0:
            parts["overhead"] = overhead_s
        if method in SCORED and self.profile.scoring is not None:
            calls = self.max_search_steps if method in SEARCH else 1
            # not corrected: the router reserves this much for scoring before the deadline,
            # and a correction below 1 must not cut that reserve
            parts["score"] = calls * self.profile.scoring.seconds(branches)
        if method in SEARCH:
            parts["prefill"] *= self.max_search_steps
            if "overhead" in parts:  # every search step sends its branches to the engine anew
                parts["overhead"] *= self.max_search_steps
        return Prediction(total_s=sum(parts.values()), parts_s=parts,
                          concurrency_per_replica=concurrency, expected_tokens=tokens,
                          seconds_per_token=decode_s / tokens if tokens > 0 else 0.0,
                          reserve_s=self.deadline_reserve_s, waves=len(waves))
