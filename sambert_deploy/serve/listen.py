"""Listening sockets bound before anything is loaded, so that an address in use is one clear error naming the
option to change (``serve`` and ``wyoming`` both; kept free of uvicorn and wyoming)."""

from __future__ import annotations

import errno
import socket
from typing import Any

from ..errors import InvalidInputError


def tcp_socket(host: str, port: int, *, label: str, param: str) -> tuple[socket.socket, Any]:
    """An unbound TCP socket for ``host:port`` and its address; ``label`` names what the user wrote."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise InvalidInputError(f"{label}: cannot resolve {host} ({e.strerror})", param=param) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock, addr


def bind_or_explain(sock: socket.socket, addr: Any, *, where: str, option: str, param: str) -> None:
    """``sock.bind(addr)``; on failure the socket is closed and the error says which ``option`` to change."""
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        hint = (f"another server is there: stop it or pick another {option}" if e.errno == errno.EADDRINUSE
                else f"check {option}")
        raise InvalidInputError(f"cannot listen on {where}: {e.strerror} ({hint})", param=param) from None
