"""Readers of Ray Serve's private internals (no public API gives what they read).

- The gateway's own ingress: :func:`own_ingress` asks Serve's controller for the YAML's
  ``proxy_location``, ``http_options`` and ``grpc_options`` (no public API hands them to a
  replica).
- Running replicas: :func:`replica_ids` reads them from a handle's router, which the
  controller keeps current by long poll. ``serve.status()`` says the same but costs tens of
  milliseconds of CPU per call (it pickles every deployment's config): polled each second,
  it was a fifth of a gateway replica's CPU.
"""

from __future__ import annotations

from typing import Any

from serving.server import Listen


async def own_ingress(servicer_function: str) -> Listen | None:
    """Where the gateway must serve itself: only when the Serve config runs no proxy
    (``proxy_location: Disabled``); ``None`` when Serve's proxy serves (the fallback).
    gRPC is served when ``grpc_options.grpc_servicer_functions`` names ``servicer_function``.
    """
    from ray.serve.config import ProxyLocation
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    location = await controller.get_proxy_location.remote()
    if location is not None and ProxyLocation(location) != ProxyLocation.Disabled:
        return None
    http = await controller.get_http_config.remote()
    grpc_options = await controller.get_grpc_config.remote()
    serves_grpc = servicer_function in (grpc_options.grpc_servicer_functions or [])
    return Listen(
        host=http.host or "127.0.0.1",
        http_port=int(http.port),
        grpc_port=int(grpc_options.port) if serves_grpc else None,
    )


def replica_ids(handle: Any) -> set[str] | None:
    """The ids of the replicas ``handle`` can route to now, or ``None`` if its router does
    not know yet (or this Ray's internals differ). Sends nothing to the deployment."""
    try:
        router = handle._router._asyncio_router
        request_router = router._request_router
        if request_router is not None:
            return {replica_id.unique_id for replica_id in request_router.curr_replicas}
        if router._running_replicas is not None:
            return {info.replica_id.unique_id for info in router._running_replicas}
    except AttributeError:
        pass
    return None
