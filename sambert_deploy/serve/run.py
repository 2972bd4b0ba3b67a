"""Running the speech server: uvicorn, plus the guards it lacks, plus a drain on shutdown.

uvicorn 0.55 over h11 has a keep-alive timeout, but no deadline for a request's headers, and its
``limit_concurrency`` answers 503 to new *requests* once that many connections are open, so idle
connections that never finish their headers (slowloris) lock everyone else out. ASGI cannot help: an
app sees a connection only once its headers are complete. :func:`guarded_protocol` adds, per
connection:

* a header deadline: the request line and headers must be complete within ``header_timeout_s`` of
  the connection (or of its first byte after a keep-alive pause), else 408 and close;
* a send buffer of ``send_buffer_bytes`` (not the kernel's autotuned megabytes), so a client that
  stops reading blocks its stream within seconds of audio and the send timeout starts counting;
* a connection cap: past ``max_connections`` the connection that has waited longest between requests
  is closed to make room (an attacker's idle sockets go first); if all are busy, the new one is closed;
* an ASGI extension (``sambert.abort`` in the scope) the app calls to cut a connection whose client
  stopped reading, or that outlived the shutdown grace period.

On SIGTERM/SIGINT (:class:`SpeechServer`): new requests get 503, queued ones too, running streams get
``shutdown_grace_s`` to finish, whatever still runs is cut, and the process exits 0 (uvicorn would
re-raise the signal). A second signal cuts at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import ABORT_EXTENSION, ServeConfig, SpeechApp
from .listen import bind_or_explain, tcp_socket

log = logging.getLogger(__name__)

def _timeout_response(seconds: float) -> bytes:
    body = (b'{"error": {"message": "the request headers did not arrive within %g s", "type": '
            b'"invalid_request_error", "param": null, "code": "header_timeout"}}' % seconds)
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


def guarded_protocol(header_timeout_s: float, max_connections: int, send_buffer_bytes: int = 0) -> type:
    """uvicorn's h11 protocol with a header deadline, a connection cap and the abort extension."""
    timeout_response = _timeout_response(header_timeout_s)

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kw: Any):
            super().__init__(*args, **kw)
            self._header_timer: asyncio.TimerHandle | None = None
            self._idle_since = time.monotonic()
            inner = self.app

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                scope["extensions"] = {**(scope.get("extensions") or {}), ABORT_EXTENSION: self._abort}
                await inner(scope, receive, send)

            self.app = app

        def _between_requests(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and self.conn.their_state is h11.IDLE

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if send_buffer_bytes and sock is not None:
                # Linux grows a send buffer to 4 MB on loopback: two minutes of PCM a client that stopped
                # reading would be sent before a send blocks and the send timeout can start counting.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
                # asyncio's own buffer in front of it (64 KiB by default) is as much again: a stalled
                # client is seen (its send blocks, it parks) only once both are full.
                transport.set_write_buffer_limits(high=max(send_buffer_bytes // 4, 4096))
            self._arm()
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections
                        if c is not self and isinstance(c, GuardedH11Protocol) and c._between_requests()]
                victim = min(idle, key=lambda c: c._idle_since) if idle else self
                log.warning("%d connections open (cap %d): closing %s", len(self.connections), max_connections,
                            "the longest idle one" if victim is not self else "the new one (all are busy)")
                victim.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._between_requests():
                self._arm()  # first bytes after a keep-alive pause: the deadline starts now, not per byte
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._idle_since = time.monotonic()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.write(timeout_response)
                self.transport.close()

        def _abort(self) -> None:
            self.transport.abort()  # not close(): a client that stopped reading never lets the buffer flush

    return GuardedH11Protocol


def make_server(app: SpeechApp, cfg: ServeConfig, *, log_level: str = "info") -> SpeechServer:
    """A uvicorn server for ``app`` with the guards above; run it with ``server.run(sockets=[bind(...)])``."""
    protocol = guarded_protocol(cfg.header_timeout_s, cfg.max_connections, cfg.send_buffer_bytes)
    config = uvicorn.Config(app, http=protocol, lifespan="on",
                            log_level=log_level, access_log=False,  # the app logs each request, escaped
                            timeout_keep_alive=cfg.keep_alive_s,
                            # after the drain only the 503s and cut connections are left to finish
                            timeout_graceful_shutdown=5, backlog=max(cfg.max_connections, 128))
    return SpeechServer(config, app, cfg.shutdown_grace_s)


class SpeechServer(uvicorn.Server):
    """uvicorn's server with a drain in front of its shutdown (see the module docstring)."""

    def __init__(self, config: Any, app: SpeechApp, grace_s: float):
        super().__init__(config)
        self.app, self.grace_s = app, grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self.draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn re-raises those once shut down, and the process would
        # then end by the signal instead of exiting 0 after a clean drain.
        loop = self._loop
        if loop is None or not self.started:
            self.should_exit = True
        elif self.draining:
            loop.call_soon_threadsafe(self._cut_now)
        else:
            self.draining = True
            loop.call_soon_threadsafe(self.begin_drain)

    def begin_drain(self) -> None:
        """503 for new requests from now; running streams get the grace period, then the server stops."""
        self.draining = True
        self.app.drain()
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    def _cut_now(self) -> None:
        n = self.app.abort_streams()
        log.warning("second signal: %d stream(s) cut, stopping now", n)
        self.should_exit = True

    async def _drain_then_exit(self) -> None:
        adm = self.app.admission
        log.info("shutting down: %d stream(s) running get up to %g s to finish; new requests get 503", adm.running,
                 self.grace_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while not self.app.idle and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self.app.idle:
            log.warning("grace period of %g s over: %d stream(s) cut", self.grace_s, self.app.abort_streams())
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use is one clear error before anything is loaded."""
    sock, addr = tcp_socket(host, port, label=f"--host {host}", param="host")
    bind_or_explain(sock, addr, where=f"{host}:{port}", option="--port", param="port")
    sock.set_inheritable(True)
    return sock


def exposure_warning(host: str, api_keys: tuple[str, ...] | list[str]) -> str | None:
    """A warning when ``host`` is reachable from other machines and no API key guards /v1/*."""
    if api_keys:
        return None
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addrs = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)}
        except (socket.gaierror, ValueError):
            addrs = set()
    if addrs and all(a.is_loopback for a in addrs):
        return None
    return (f"serving on {host} without an API key: anyone who can reach this port can use it (pass "
            "--api-key-file FILE, or --host 127.0.0.1)")


def run(app: SpeechApp, cfg: ServeConfig, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serves until SIGTERM/SIGINT, drains, returns (exit 0)."""
    make_server(app, cfg, log_level=log_level).run(sockets=[sock])


__all__ = ["SpeechServer", "bind", "exposure_warning", "guarded_protocol", "make_server", "run"]
