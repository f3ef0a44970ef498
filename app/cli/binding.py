"""The HTTP port, bound first: a port in use fails the start before any server, discovery or
lease is touched, in one line naming what to change."""

from __future__ import annotations

import socket
import sys


def bind(host: str, port: int) -> socket.socket | None:
    """The HTTP port, bound before anything else starts (brokers, discovery, leases), or None
    after one line naming what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        print(
            f"APP_PORT={port}: {host}:{port} cannot be bound ({exc.strerror}; another "
            "instance?): set APP_PORT to a free port, or run several instances with "
            "--instances N (ports from APP_PORT up)",
            file=sys.stderr,
        )
        return None
    return sock
