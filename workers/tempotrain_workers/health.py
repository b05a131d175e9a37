"""The worker's probe endpoint for its pod: `GET /livez` answers while the event loop does
(a wedged loop gets the container restarted), `GET /readyz` once the process is connected to
Temporal and its workers are polling (a pod that cannot reach Temporal shows not Ready).
Served from the workers' own event loop, so an answer means the loop is alive."""

from __future__ import annotations

import asyncio
import contextlib

LIVE_PATH = "/livez"
READY_PATH = "/readyz"


class HealthServer:
    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.ready = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.host, self.port)
        if self.port == 0:  # an ephemeral port (tests): say which
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode(errors="replace").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == LIVE_PATH:
                status, body = "200 OK", "live"
            elif path == READY_PATH:
                status, body = (
                    ("200 OK", "polling")
                    if self.ready
                    else ("503 Service Unavailable", "not polling yet")
                )
            else:
                status, body = "404 Not Found", "no such endpoint"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
                f"\r\nConnection: close\r\n\r\n{body}".encode()
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
