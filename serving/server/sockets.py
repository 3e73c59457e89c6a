"""Listening sockets the gateway's servers share between replicas on one node, and
accepting connections from them."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Connections the kernel holds for us before they are accepted. A bound, not a queue to
# hide overload in (the servers answer or refuse what they accept at once), but a large
# one: past it the kernel drops the client's SYN, and the client waits a second or more to
# try again, where accepting and refusing at once takes under a millisecond. Under
# overload, open-loop clients open a connection per request while the loop is busy (at
# 6,400 req/s, hundreds within one of its 30 ms stalls). Linux caps it at somaxconn.
LISTEN_BACKLOG = 4096
ACCEPT_BATCH = 1024  # connections accepted per wake-up at most (then other work runs)
ACCEPT_RETRY_S = 1.0  # pause after accept() failed for want of descriptors or memory


def listen(host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (several gateway replicas
    on a node share the port; the kernel spreads connections over them), listening.

    ``OSError`` if the address is taken by a socket without ``SO_REUSEPORT`` (or by another
    user), or ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Acceptor:
    """Accepts every connection waiting on a listening ``sock`` each time it is readable,
    and serves each with a new ``protocol_factory()`` on the running loop.

    Why not ``loop.create_server``: uvloop (libuv) accepts one connection per turn of the
    loop. Under load a turn takes milliseconds, so a burst of new connections waited in the
    listen backlog for seconds (2.2 s at 6,400 req/s, measured), unseen by the loop's lag,
    to be refused as late once accepted. ``start()`` on the serving loop, ``stop()`` closes
    ``sock`` (connections already accepted are their protocol's to close).
    """

    def __init__(self, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.remove_reader(self.sock.fileno())
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()
        self._loop = None

    def _accept(self) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                connection, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited
            except OSError as error:
                # Out of descriptors or memory: a pause lets connections close (as asyncio).
                logger.warning("accepting on %s failed (%s); trying again in %.0f s",
                               self.sock.getsockname(), error, ACCEPT_RETRY_S)
                self._loop.remove_reader(self.sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY_S, self.start)
                return
            connection.setblocking(False)
            task = self._loop.create_task(self._connect(connection))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self.protocol_factory, connection)
        except OSError:
            connection.close()  # reset before it was set up: nothing was read from it
