"""The operator's Temporal client: TLS or API key from files, pydantic converter."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

from tempotrain_operator.settings import OperatorSettings


async def connect(settings: OperatorSettings) -> Client:
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert or settings.temporal_tls_ca:
        tls = await asyncio.to_thread(_tls_config, settings)
    api_key = None
    if settings.temporal_api_key_file:
        api_key = (await asyncio.to_thread(Path(settings.temporal_api_key_file).read_text)).strip()
        tls = tls or True
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=api_key,
    )


def _tls_config(settings: OperatorSettings) -> TLSConfig:
    return TLSConfig(
        client_cert=_read(settings.temporal_tls_cert),
        client_private_key=_read(settings.temporal_tls_key),
        server_root_ca_cert=_read(settings.temporal_tls_ca),
    )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
