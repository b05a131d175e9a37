"""The worker's probe endpoint, over a real loopback socket: live at once, ready only once
marked polling, and unknown paths refused."""

from __future__ import annotations

import asyncio

from tempotrain_workers.health import HealthServer


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    status = int(response.split()[1])
    return status, response.split("\r\n\r\n", 1)[1]


async def test_live_at_once_ready_only_while_polling() -> None:
    server = HealthServer(0, host="127.0.0.1")
    await server.start()
    try:
        assert await _get(server.port, "/livez") == (200, "live")
        assert (await _get(server.port, "/readyz"))[0] == 503
        server.ready = True
        assert await _get(server.port, "/readyz") == (200, "polling")
        assert (await _get(server.port, "/metrics"))[0] == 404
    finally:
        await server.stop()
