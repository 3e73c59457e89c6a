"""Patches of Ray Serve's private internals, each checked against the Ray version it was
written for, so an upgrade that changes them degrades with a warning instead of breaking.

- The gRPC call deadline: Ray 2.60 does not pass it to deployments. :class:`DeadlineContext`
  replaces the context class the replica's direct-ingress gRPC server builds per call, so
  the gateway sees ``time_remaining()``. Under the default proxy (which builds its own
  contexts) the deadline stays unknown; clients there can send ``parameters.timeout``.
- Running replicas: :func:`running_replicas` reads them from a handle's router, which the
  controller keeps current by long poll. ``serve.status()`` says the same but costs tens of
  milliseconds of CPU per call (it pickles every deployment's config): polled each second,
  it was a fifth of a gateway replica's CPU.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.serve._private import replica as serve_replica
from ray.serve.grpc_util import RayServegRPCContext

logger = logging.getLogger(__name__)
TESTED_RAY = "2.60."


class DeadlineContext(RayServegRPCContext):
    """Ray Serve's gRPC context plus the call's deadline, in wall-clock seconds (this context
    may be pickled to another process)."""

    def __init__(self, grpc_context: Any) -> None:
        super().__init__(grpc_context)
        remaining = grpc_context.time_remaining()
        self.deadline_unix = None if remaining is None else time.time() + remaining


def call_deadline(context: RayServegRPCContext) -> float | None:
    """The call's deadline in ``time.monotonic()`` seconds, if the context knows it."""
    deadline_unix = getattr(context, "deadline_unix", None)
    if deadline_unix is None:
        return None
    return time.monotonic() + (deadline_unix - time.time())


def install() -> bool:
    """Install the patches if this is the Ray they were written for; say so either way."""
    if not ray.__version__.startswith(TESTED_RAY):
        logger.warning("Ray %s is not %sx: gRPC deadlines will not reach the gateway",
                       ray.__version__, TESTED_RAY)
        return False
    if serve_replica.RayServegRPCContext is RayServegRPCContext:
        serve_replica.RayServegRPCContext = DeadlineContext
    return serve_replica.RayServegRPCContext is DeadlineContext


def running_replicas(handle: Any) -> int | None:
    """How many replicas ``handle`` can route to now, or ``None`` if its router does not
    know yet (or this Ray's internals differ). Sends nothing to the deployment."""
    try:
        router = handle._router._asyncio_router
        request_router = router._request_router
        if request_router is not None:
            return len(request_router.curr_replicas)
        if router._running_replicas is not None:
            return len(router._running_replicas)
    except AttributeError:
        pass
    return None
