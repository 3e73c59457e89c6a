"""The gateway's direct connections to the replicas of one (model, pool).

Ray Serve says which replicas run (:meth:`WorkerLinks.sync` is given their ids each
refresh); :class:`~serving.transport.BatchClient` connections to them carry the batches.
A batch goes to the connection with the fewest batches in flight: this gateway's count is
exact, since it sent them all. A replica that is gone, or whose connection broke, is
dropped; the next refresh connects again if Serve still runs it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from serving.transport import BatchClient

logger = logging.getLogger(__name__)
Connect = Callable[[str], Awaitable[BatchClient | None]]


class WorkerLinks:
    """Connections by replica id. ``connect(replica_id)`` opens one, or returns ``None``
    when the replica has not published where it listens (yet)."""

    def __init__(self, connect: Connect, *, rng: random.Random | None = None) -> None:
        self._connect = connect
        self._rng = rng or random.Random()
        self.clients: dict[str, BatchClient] = {}

    async def sync(self, replica_ids: set[str]) -> None:
        """Close the connections of replicas no longer running; open the missing ones."""
        for replica_id in [r for r in self.clients if r not in replica_ids]:
            self.clients.pop(replica_id).close()
        for replica_id, client in list(self.clients.items()):
            if client.closed:
                del self.clients[replica_id]
        missing = [r for r in replica_ids if r not in self.clients]
        opened = await asyncio.gather(*(self._open(r) for r in missing))
        for replica_id, client in zip(missing, opened, strict=True):
            if client is None:
                continue
            if replica_id in self.clients:  # opened twice by overlapping syncs
                client.close()
            else:
                self.clients[replica_id] = client

    async def _open(self, replica_id: str) -> BatchClient | None:
        try:
            return await self._connect(replica_id)
        except (OSError, TimeoutError) as exc:  # it may be starting or stopping
            logger.info("no direct connection to worker replica %s yet: %r", replica_id, exc)
            return None

    def pick(self) -> BatchClient | None:
        """The open connection with the fewest batches in flight (ties at random)."""
        best: BatchClient | None = None
        best_key = (0, 0.0)
        for client in self.clients.values():
            if client.closed:
                continue
            key = (client.in_flight, self._rng.random())
            if best is None or key < best_key:
                best, best_key = client, key
        return best

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


__all__ = ["WorkerLinks"]
