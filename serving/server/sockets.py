"""Listening sockets the gateway's servers share between replicas on one node."""

from __future__ import annotations

import socket

# Connections the kernel holds for us before they are accepted: a bound, not a queue to
# hide overload in (the servers answer or refuse what they accept at once).
LISTEN_BACKLOG = 512


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
