"""Speed profiles: measured decode speed of each generator pool against concurrency and draft
length k, as written by ``tts-ray profile`` and read by the planner."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonFile(_Strict):
    """A measured file the planner reads (profile or calibration): JSON on disk."""

    @classmethod
    def load(cls, path: str | Path):
        """Read the file.

        Raises:
            FileNotFoundError: no such file; pydantic.ValidationError: malformed.
        """
        return cls.model_validate(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


class SpeedCurve(_Strict):
    """Decode speed of one engine configuration (a target with draft length k) on one replica.

    ``seconds_per_token[i]`` is the wall time per generated token of each sequence while
    ``concurrency[i]`` sequences decode together: the quantity a branch's latency scales with.
    """

    num_speculative_tokens: int = Field(..., ge=0, description="Draft length k (0: no speculation).")
    concurrency: list[int] = Field(..., min_length=1, description="Concurrent sequences, increasing.")
    seconds_per_token: list[float] = Field(..., min_length=1,
                                           description="Per-sequence seconds per generated token.")
    tokens_per_step: float = Field(1.0, ge=1.0,
                                   description="Tokens per engine step (1 + accepted draft tokens).")
    acceptance_rate: float | None = Field(None, ge=0, le=1,
                                          description="Accepted / proposed draft tokens (None: k=0).")
    prefill_s: float = Field(0.0, ge=0, description="Time to the first token of a typical prompt.")

    @model_validator(mode="after")
    def _shape(self) -> SpeedCurve:
        if len(self.concurrency) != len(self.seconds_per_token):
            raise ValueError("concurrency and seconds_per_token differ in length")
        if any(b <= a for a, b in zip(self.concurrency, self.concurrency[1:])):
            raise ValueError("concurrency must increase")
        if any(s <= 0 for s in self.seconds_per_token):
            raise ValueError("seconds_per_token must be positive")
        return self

    def seconds_per_token_at(self, concurrency: float) -> float:
        """Interpolated per-sequence seconds per token at ``concurrency`` sequences; below the
        first point it is the first value, above the last it grows along the last segment
        (at least proportionally to concurrency once decoding is compute-bound)."""
        xs, ys = self.concurrency, self.seconds_per_token
        if concurrency <= xs[0]:
            return ys[0]
        if concurrency >= xs[-1]:
            if len(xs) == 1:
                return ys[0] * concurrency / xs[0]
            slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), ys[-1] / xs[-1])
            return ys[-1] + slope * (concurrency - xs[-1])
        i = bisect.bisect_right(xs, concurrency)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (concurrency - x0) / (x1 - x0)

    def step_seconds(self) -> list[float]:
        """Engine step time at each profiled concurrency (seconds per token x tokens per step)."""
        return [s * self.tokens_per_step for s in self.seconds_per_token]

    def flat_until(self, slowdown: float = 0.10) -> int:
        """The largest profiled concurrency whose step time is within ``slowdown`` (e.g. 10%) of
        the step time at the first point: how far B grows while the curve is flat."""
        steps = self.step_seconds()
        best = self.concurrency[0]
        for c, s in zip(self.concurrency, steps):
            if s <= steps[0] * (1 + slowdown):
                best = c
            else:
                break
        return best


class ScoringCurve(_Strict):
    """Reward-model scoring time for one request: ``base_s + per_solution_s * solutions``."""

    base_s: float = Field(..., ge=0, description="Fixed cost of one scoring call.")
    per_solution_s: float = Field(..., ge=0, description="Added cost per scored solution.")

    def seconds(self, solutions: int) -> float:
        return self.base_s + self.per_solution_s * solutions


class PoolProfile(_Strict):
    """The measured curves of one generator pool: one per draft length tried."""

    model_id: str = Field(..., description="Model the pool serves.")
    num_speculative_tokens: int = Field(0, ge=0, description="Draft length the pool is configured with.")
    curves: list[SpeedCurve] = Field(..., min_length=1, description="One curve per measured k.")

    def curve(self, num_speculative_tokens: int | None = None) -> SpeedCurve:
        """The curve for draft length ``k`` (default: the pool's own).

        Raises:
            KeyError: that k was not measured.
        """
        k = self.num_speculative_tokens if num_speculative_tokens is None else num_speculative_tokens
        for curve in self.curves:
            if curve.num_speculative_tokens == k:
                return curve
        raise KeyError(f"no curve for num_speculative_tokens={k}")


class ClusterProfile(JsonFile):
    """Everything ``tts-ray profile`` measured on one kind of device."""

    device: str = Field(..., description="Where it was measured (GPU name, or CPU description).")
    created: str = Field("", description="ISO time of the measurement.")
    command: str = Field("", description="The command that produced it.")
    pools: dict[str, PoolProfile] = Field(default_factory=dict, description="Per generator pool name.")
    scoring: ScoringCurve | None = Field(None, description="Reward scoring time, if measured.")
