"""The same app on Ray Serve: one replica per GPU (or per CPU worker), each its own batching server.

`ray_application(settings, ...)` wraps `create_app` as a Ray Serve ingress deployment (the app is
built on each replica, where its startup loads the checkpoint); `run_on_ray` connects to the cluster
`RAY_ADDRESS` names (a fresh local one otherwise), deploys it and serves HTTP on `host:port`.
Ray Serve's router spreads requests over replicas; each replica batches what it gets. Autoscaling:
`autoscaling_config` (e.g. `{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests":
16}`) replaces the fixed `num_replicas`.
"""

from __future__ import annotations

import logging
import os

from .app import ServerSettings, create_app

logger = logging.getLogger(__name__)
DEPLOYMENT_NAME = "pixelrefer"


def ray_application(settings: ServerSettings, *, num_replicas: int = 1, gpus_per_replica: float | None = None,
                    autoscaling_config: dict | None = None, max_ongoing_requests: int | None = None):
    """A bound Ray Serve application serving `create_app(settings)`.

    Args:
        num_replicas: fixed replica count (ignored when `autoscaling_config` is given).
        gpus_per_replica: GPUs each replica reserves (default: 1 when this machine has CUDA, else 0).
        autoscaling_config: Ray Serve autoscaling settings, or None for a fixed count.
        max_ongoing_requests: requests Ray routes to one replica at once (default: the scheduler's
            `max_queue + max_batch`, so the replica's own 429 stays reachable).
    """
    from ray import serve

    if gpus_per_replica is None:
        import torch

        gpus_per_replica = 1 if torch.cuda.is_available() else 0
    options = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": 1},
        "max_ongoing_requests": max_ongoing_requests or settings.max_queue + settings.max_batch,
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas

    def build():
        return create_app(settings)

    deployment = serve.deployment(serve.ingress(build)(), **options)
    return deployment.bind()


def run_on_ray(settings: ServerSettings, *, host: str, port: int, num_replicas: int = 1,
               autoscaling_config: dict | None = None, blocking: bool = True) -> None:
    """Deploy on the Ray cluster of `RAY_ADDRESS` (or a new local one) and serve on `host:port`;
    with `blocking` wait until interrupted, then shut the deployment down."""
    import ray
    from ray import serve

    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = ray_application(settings, num_replicas=num_replicas, autoscaling_config=autoscaling_config)
    serve.run(app, name=DEPLOYMENT_NAME, route_prefix="/", blocking=blocking)
    logger.info("serving %s on Ray Serve at http://%s:%d", settings.model_name, host, port)
