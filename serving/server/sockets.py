"""Listening sockets the gateway's servers share between replicas on one node."""

from __future__ import annotations

import socket

# Connections the kernel holds for us before they are accepted. A bound, not a queue to
# hide overload in (the servers answer or refuse what they accept at once), but a large
# one: past it the kernel drops the client's SYN, and the client waits a second or more to
# try again, where accepting and refusing at once takes under a millisecond. Under
# overload, open-loop clients open a connection per request while the loop is busy (at
# 6,400 req/s, hundreds within one of its 30 ms stalls). Linux caps it at somaxconn.
LISTEN_BACKLOG = 4096


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
