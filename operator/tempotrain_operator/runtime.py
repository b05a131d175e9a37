"""What handlers share: settings and one lazily (re)connected Temporal client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from temporalio.client import Client

from tempotrain_operator.settings import OperatorSettings


@dataclass
class Runtime:
    settings: OperatorSettings
    _client: Client | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def client(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.wait_for(self.settings.temporal.connect(), timeout=10)
            return self._client
