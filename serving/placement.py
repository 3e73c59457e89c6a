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

from serving.autoscaling import ScaledPool
from serving.config import AutoscalingSettings, GatewayConfig, PoolConfig
from serving.telemetry import shared

# Of its pool's resource, what one replica takes: a node declaring 1 unit hosts up to 1,000
# replicas, so CPUs, GPUs and memory, not this marker, bound how many fit.
RESOURCE_PER_REPLICA = 0.001
SPARE_CALLS = 4
# Each batch goes to the replica with the fewest of this gateway's batches (serving.balancing).
REQUEST_ROUTER = "serving.balancing:LeastBusyRouter"


def worker_name(model: str, pool: str) -> str:
    return f"worker-{model}-{pool}"


def pool_ranks(pools: dict[str, PoolConfig]) -> dict[str, int]:
    """The order the autoscaler fills pools in: on-prem (as configured), then cloud by
    price per replica-hour (spot before on-demand)."""
    onprem = [name for name, pool in pools.items() if not pool.cloud]
    cloud = sorted((n for n, p in pools.items() if p.cloud), key=lambda n: pools[n].price_per_hour)
    return {name: rank for rank, name in enumerate(onprem + cloud)}


def scaled_pool(
    model: str, pool_name: str, pool: PoolConfig, rank: int, settings: AutoscalingSettings
) -> ScaledPool:
    """What the autoscaler needs to know of the workers of ``model`` on ``pool_name``."""
    return ScaledPool(
        deployment=worker_name(model, pool_name), model=model, pool=pool_name,
        cloud=pool.cloud, rank=rank,
        min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
        target_utilization=pool.target_utilization, cold_start_s=pool.cold_start_s,
        downscale_delay_s=pool.downscale_delay_s, **settings.model_dump(),
    )


def worker_options(
    model: str, pool_name: str, pool: PoolConfig, gateway_replicas: int,
    scaling: ScaledPool | None = None,
) -> dict:
    """Serve deployment options for the workers of ``model`` on ``pool_name``, scaled by
    the gateway's autoscaler as ``scaling`` describes (within ``[min, max]_replicas``);
    without ``scaling``, a fixed count."""
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
        "request_router_config": {"request_router_class": REQUEST_ROUTER},
    }
    if scaling is None:
        options["num_replicas"] = pool.min_replicas
        if pool.min_replicas != pool.max_replicas:
            raise ValueError(f"pool '{pool_name}' autoscales: worker_options needs scaling")
    else:
        # Fixed pools too: the autoscaler sees only deployments with an autoscaling_config,
        # and it must count their capacity when it decides what the others need.
        options["autoscaling_config"] = {
            "min_replicas": pool.min_replicas,
            "max_replicas": pool.max_replicas,
            # The policy's targets apply as given: its own windows and keep-alive are the
            # delays (Serve would otherwise add 30 s up and 600 s down).
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            "downscale_to_zero_delay_s": 0,
            "policy": {
                "policy_function": "serving.autoscaler:HoldPolicy",
                "policy_kwargs": scaling.to_kwargs(),
            },
        }
    return options


# How often a gateway reports its demand to Serve's controller, and over what it averages.
DEMAND_INTERVAL_S = 0.5


def gateway_options(config: GatewayConfig) -> dict:
    """Serve deployment options for the gateway. It has an ``autoscaling_config`` (with a
    fixed count) only so that Serve collects its demand metrics for the pool autoscaler.
    Several replicas get one metrics directory (:mod:`serving.telemetry.shared`): they
    share their node's port, so each scrape must report them all."""
    actor: dict[str, Any] = {"num_cpus": 0, "resources": dict(config.gateway_resources)}
    if config.gateway_replicas > 1:
        actor["runtime_env"] = {"env_vars": {shared.DIR_ENV: shared.new_dir()}}
    return {
        "autoscaling_config": {
            "min_replicas": config.gateway_replicas,
            "max_replicas": config.gateway_replicas,
            "metrics_interval_s": DEMAND_INTERVAL_S,
            "look_back_period_s": 2 * DEMAND_INTERVAL_S,
        },
        "max_ongoing_requests": config.gateway_max_ongoing_requests,
        "ray_actor_options": actor,
    }


def local_resources(config: GatewayConfig) -> dict[str, float]:
    """The custom resources one machine must declare to host every pool of ``config``."""
    return {name: 1.0 for name in config.pools}


def missing_resources(config: GatewayConfig, cluster: dict[str, float]) -> list[str]:
    """Why the pools of ``config`` cannot be placed on a cluster with ``cluster`` resources
    in total: one line per pool that needs replicas now and whose resource no node has.

    A pool with ``min_replicas: 0`` may rely on the cluster autoscaler to start its first
    node when the pool scales up, so its resource may be absent at start.
    """
    gateway = [
        f"the gateway needs the Ray resource '{name}' (gateway_resources) on some node, and "
        f"no node of the cluster declares it"
        for name, amount in config.gateway_resources.items() if cluster.get(name, 0.0) < amount
    ]
    return gateway + [
        f"pool '{name}' needs the Ray resource '{name}' on some node, and no node of the "
        f"cluster declares it (ray start --resources '{{\"{name}\": 1}}', or a worker "
        f"group's rayStartParams.resources)"
        for name, pool in config.pools.items()
        if pool.min_replicas > 0 and cluster.get(name, 0.0) < RESOURCE_PER_REPLICA
    ]
