"""Latency-aware planning: speed profiles, accuracy calibration, the latency model, the planner
and the cluster-wide budget keeper (pure Python; the measuring commands import vLLM lazily)."""

from tts_ray.planner.calibration import Calibration, ModelCalibration
from tts_ray.planner.early_stop import EarlyStopRule
from tts_ray.planner.keeper import BudgetKeeper
from tts_ray.planner.latency import LatencyModel
from tts_ray.planner.planner import Infeasible, Plan, Planner, PlanRequest
from tts_ray.planner.profile import ClusterProfile, PoolProfile, SpeedCurve

__all__ = ["BudgetKeeper", "Calibration", "ClusterProfile", "EarlyStopRule", "Infeasible",
           "LatencyModel", "ModelCalibration", "Plan", "PlanRequest", "Planner", "PoolProfile",
           "SpeedCurve"]
