"""Where each (model, pool) deployment's replicas run, as Ray Serve deployment options.

Each pool's replicas require a small amount of a Ray custom resource named after the pool,
so on a cluster only the nodes that declare it (``ray start --resources '{"cloud-gpu": 1}'``,
a KubeRay worker group's ``rayStartParams.resources``) host that pool, and Ray's cluster
autoscaler knows which node type to launch for a pending replica. A custom resource is the
hard key because Ray's v1 cluster autoscaler ignores node labels; a pool's
``label_selector`` is added on top. Plain Python: the Ray layer passes these on.
"""

from __future__ import annotations

from typing import Any

from serving.config import GatewayConfig, PoolConfig

# Of its pool's resource, what one replica takes: a node declaring 1 unit hosts up to 1,000
# replicas, so CPUs, GPUs and memory, not this marker, bound how many fit.
RESOURCE_PER_REPLICA = 0.001
SPARE_CALLS = 4


def worker_name(model: str, pool: str) -> str:
    return f"worker-{model}-{pool}"


def worker_options(model: str, pool_name: str, pool: PoolConfig, gateway_replicas: int) -> dict:
    """Serve deployment options for the workers of ``model`` on ``pool_name``."""
    actor: dict[str, Any] = {
        "num_cpus": pool.num_cpus_per_replica,
        "num_gpus": pool.num_gpus_per_replica,
        "resources": {pool_name: RESOURCE_PER_REPLICA},
    }
    if pool.label_selector:
        actor["label_selector"] = dict(pool.label_selector)
    options: dict[str, Any] = {
        "name": worker_name(model, pool_name),
        # The gateway keeps at most max_batches_in_flight batches per worker replica itself;
        # Ray's own limit must never bind (a call over it waits in Ray's router, whose retry
        # backoff costs tens of milliseconds to seconds): spare slots per gateway for its
        # status probes, and for a finished call the replica has not yet counted out.
        "max_ongoing_requests": (pool.max_batches_in_flight + SPARE_CALLS) * gateway_replicas,
        "ray_actor_options": actor,
    }
    if pool.min_replicas == pool.max_replicas:
        options["num_replicas"] = pool.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": pool.min_replicas,
            "max_replicas": pool.max_replicas,
            "target_ongoing_requests": pool.max_batches_in_flight,
        }
    return options


def local_resources(config: GatewayConfig) -> dict[str, float]:
    """The custom resources one machine must declare to host every pool of ``config``."""
    return {name: 1.0 for name in config.pools}


def missing_resources(config: GatewayConfig, cluster: dict[str, float]) -> list[str]:
    """Why the pools of ``config`` cannot be placed on a cluster with ``cluster`` resources
    in total: one line per pool that needs replicas now and whose resource no node has.

    A pool with ``min_replicas: 0`` may rely on the cluster autoscaler to start its first
    node when the pool scales up, so its resource may be absent at start.
    """
    return [
        f"pool '{name}' needs the Ray resource '{name}' on some node, and no node of the "
        f"cluster declares it (ray start --resources '{{\"{name}\": 1}}', or a worker "
        f"group's rayStartParams.resources)"
        for name, pool in config.pools.items()
        if pool.min_replicas > 0 and cluster.get(name, 0.0) < RESOURCE_PER_REPLICA
    ]
