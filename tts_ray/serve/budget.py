"""The budget deployment: one replica holding the cluster-wide ledger of branches in flight,
the planner over it and the live speed corrections, shared by every router replica."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from ray import serve

from tts_ray.config import AppConfig, resolve_data_source
from tts_ray.planner.calibration import Calibration
from tts_ray.planner.keeper import BranchObservation, BudgetKeeper
from tts_ray.planner.planner import Infeasible, PlanRequest
from tts_ray.planner.profile import ClusterProfile

REPLICA_REFRESH_S = 10.0  # how often autoscaled replica counts are re-read


class BudgetServer:
    """Admits and releases requests for the routers. Methods are coroutines without awaits
    inside, so each runs alone on the replica's event loop: admissions never interleave."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = AppConfig.model_validate(config)
        router = self.config.router
        profile_path = resolve_data_source(router.profile_source)
        calibration_path = resolve_data_source(router.calibration_source)
        self.keeper = BudgetKeeper(
            self.config,
            profile=ClusterProfile.load(profile_path) if profile_path else None,
            calibration=Calibration.load(calibration_path) if calibration_path else None,
            ewma_alpha=router.speed_ewma_alpha)
        self._refresher = None
        if any(pool.autoscaling for pool in self.config.generators):
            self._refresher = asyncio.get_event_loop().create_task(self._refresh_replicas())

    async def admit(self, request_id: str, request: dict[str, Any],
                    answered: list[str] | None = None) -> dict[str, Any]:
        """Plan and reserve. ``answered``: the calling router's requests already answered whose
        release may not have arrived (see ``BudgetKeeper.admit``). Returns ``{"plan": {...}}``,
        ``{"infeasible": {"message", "retry_after_s", "predicted_s"}}`` or ``{"error":
        message}`` (no pool for the model); plain dicts, so nothing depends on exceptions
        crossing Ray."""
        try:
            return {"plan": self.keeper.admit(request_id, PlanRequest(**request), answered or ()).as_dict()}
        except Infeasible as exc:
            return {"infeasible": {"message": str(exc), "retry_after_s": exc.retry_after_s,
                                   "predicted_s": exc.predicted_s}}
        except ValueError as exc:
            return {"error": str(exc)}

    async def release(self, request_id: str, observations: list[dict[str, Any]],
                      predicted_s: float | None, actual_s: float | None,
                      needed_margin_s: float | None = None, cut: bool | None = None) -> None:
        self.keeper.release(request_id, [BranchObservation(**o) for o in observations],
                            predicted_s=predicted_s, actual_s=actual_s, needed_margin_s=needed_margin_s,
                            cut=cut)

    async def status(self) -> dict[str, Any]:
        return self.keeper.status()

    async def _refresh_replicas(self) -> None:
        names = {f"generator-{pool.name}": pool.name for pool in self.config.generators}
        while True:
            await asyncio.sleep(REPLICA_REFRESH_S)
            try:
                for app in serve.status().applications.values():
                    for name, deployment in app.deployments.items():
                        if name in names:
                            running = deployment.replica_states.get("RUNNING", 0)
                            self.keeper.set_replicas(names[name], running)
            except Exception:  # noqa: BLE001, S112 - a failed refresh keeps the last counts
                continue


def build_budget(config: AppConfig):
    """The bound budget deployment (exactly one replica: it is the cluster's single ledger)."""
    deployment = serve.deployment(BudgetServer, name="budget", num_replicas=1,
                                  max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0.1})
    return deployment.bind(config.model_dump())


def observations_of(branches) -> list[dict[str, Any]]:
    """What the keeper learns from: every branch that answered, finished or stopped at the
    deadline (tokens decoded in the time it ran are a speed observation either way; leaving
    out the stopped ones would hide exactly the slow branches). Cancelled branches carry no
    token count and are left out."""
    return [asdict(BranchObservation(num_tokens=b.num_tokens, elapsed_s=b.elapsed_s or 0.0,
                                     spec_accepted_tokens=b.spec_accepted_tokens,
                                     spec_verify_steps=b.spec_verify_steps,
                                     stopped=b.finish_reason == "deadline"))
            for b in branches if b.finish_reason is not None and b.elapsed_s and b.num_tokens]
