"""Ray Serve as the scale-out path (``care-companion serve --ray --replicas N``): the same FastAPI app, built by
:func:`~care_companion.serving.app.create_app` inside each replica, as the ingress of one Serve deployment.

Each replica is a whole service (its own models, micro-batchers, monitor and database pool, as one uvicorn
process would be); Serve's HTTP proxy spreads requests over them and restarts a replica that dies. With
``CARE_RAY_MAX_REPLICAS`` above ``--replicas`` the deployment autoscales between the two on requests in flight
(``CARE_RAY_TARGET_ONGOING_REQUESTS``). Local Ray by default; a cluster at ``RAY_ADDRESS`` (or ``--ray-address``).
Serve's proxy is one more hop than uvicorn alone: ``benchmarks/ray_serve.py`` measures what it costs.
"""

from __future__ import annotations

import logging
from typing import Any

from care_companion.config import Settings

log = logging.getLogger(__name__)

APP_NAME = "care-companion"
DEPLOYMENT = "care-companion"


class ServiceReplica:
    """One replica's service: the app is built inside the replica from the settings it was bound with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        """The ASGI app this replica serves (Serve calls it once the replica starts; models load then)."""
        from care_companion.serving.app import create_app

        return create_app(self.settings)


def scaling(settings: Settings, replicas: int) -> dict[str, Any]:
    """The deployment's replica options: a fixed count, or autoscaling up to ``CARE_RAY_MAX_REPLICAS``."""
    if settings.ray_max_replicas > replicas:
        return {
            "autoscaling_config": {
                "min_replicas": replicas,
                "initial_replicas": replicas,
                "max_replicas": settings.ray_max_replicas,
                "target_ongoing_requests": settings.ray_target_ongoing_requests,
            }
        }
    return {"num_replicas": replicas}


def application(settings: Settings, replicas: int) -> Any:
    """The bound Serve application: the service as a deployment of ``replicas`` replicas."""
    from ray import serve

    deployment = serve.deployment(
        name=DEPLOYMENT,
        ray_actor_options={"num_cpus": settings.ray_replica_cpus},
        max_ongoing_requests=max(16, settings.max_batch_size * 4),
        graceful_shutdown_timeout_s=30,
        health_check_period_s=5,
        **scaling(settings, replicas),
    )(serve.ingress()(ServiceReplica))
    return deployment.bind(settings)


def start(settings: Settings, replicas: int, *, address: str | None = None) -> None:
    """Start (or join) Ray, Serve's HTTP proxy on ``settings.host:port`` and the deployment; returns once every
    replica is up (blocking: models load in the replicas)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, replicas), name=APP_NAME, route_prefix="/", blocking=False)


def stop() -> None:
    """Shut Serve down (replicas finish their requests) and leave Ray."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
