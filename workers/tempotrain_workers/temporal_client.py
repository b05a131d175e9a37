"""How every TempoTrain process reaches Temporal: address, namespace, TLS (system roots, a
private CA, or mTLS) and an API key, from flags or the same environment variables everywhere.
The operator hands the worker pods it creates the same settings (see `worker_environment`)."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

# Where worker pods mount the Secret named by the operator's --worker-temporal-secret, and the
# keys it must hold (only those the connection uses).
SECRET_MOUNT = "/etc/tempotrain/temporal"
SECRET_KEYS = {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key", "api_key": "api-key"}


@dataclass(frozen=True)
class TemporalConnection:
    address: str
    namespace: str = "default"
    tls: bool = False  # TLS with the system's root CAs (implied by any file below)
    tls_cert: str | None = None  # client certificate (mTLS)
    tls_key: str | None = None
    tls_ca: str | None = None  # a private CA to verify the server
    api_key_file: str | None = None  # e.g. Temporal Cloud; implies TLS

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_cert or self.tls_ca or self.api_key_file)

    async def connect(self) -> Client:
        tls: TLSConfig | bool = self.uses_tls
        if self.tls_cert or self.tls_ca:
            tls = await asyncio.to_thread(self._tls_config)
        api_key = None
        if self.api_key_file:
            api_key = (await asyncio.to_thread(Path(self.api_key_file).read_text)).strip()
        return await Client.connect(
            self.address,
            namespace=self.namespace,
            data_converter=pydantic_data_converter,
            tls=tls,
            api_key=api_key,
        )

    def _tls_config(self) -> TLSConfig:
        return TLSConfig(
            client_cert=_read(self.tls_cert),
            client_private_key=_read(self.tls_key),
            server_root_ca_cert=_read(self.tls_ca),
        )

    def worker_environment(self, *, with_files: bool) -> list[dict[str, str]]:
        """Env of a worker pod: the same kind of connection (TLS, CA, mTLS, API key) as this
        one; `with_files`: the files come from the Secret mounted at SECRET_MOUNT."""
        env = [
            {"name": "TEMPORAL_ADDRESS", "value": self.address},
            {"name": "TEMPORAL_NAMESPACE", "value": self.namespace},
        ]
        if self.uses_tls:
            env.append({"name": "TEMPORAL_TLS", "value": "true"})
        files = {
            "TEMPORAL_TLS_CA": ("ca", self.tls_ca),
            "TEMPORAL_TLS_CERT": ("cert", self.tls_cert),
            "TEMPORAL_TLS_KEY": ("key", self.tls_key),
            "TEMPORAL_API_KEY_FILE": ("api_key", self.api_key_file),
        }
        for name, (key, used) in files.items():
            if used and with_files:
                env.append({"name": name, "value": f"{SECRET_MOUNT}/{SECRET_KEYS[key]}"})
        return env


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def add_connection_arguments(
    parser: argparse.ArgumentParser,
    address_flags: tuple[str, ...] = ("--temporal-address",),
    namespace_flags: tuple[str, ...] = ("--temporal-namespace",),
) -> None:
    env = os.environ.get
    group = parser.add_argument_group("Temporal")
    group.add_argument(
        *address_flags,
        dest="temporal_address",
        default=env("TEMPORAL_ADDRESS", "localhost:7233"),
        help="frontend host:port (env TEMPORAL_ADDRESS)",
    )
    group.add_argument(
        *namespace_flags,
        dest="temporal_namespace",
        default=env("TEMPORAL_NAMESPACE", "default"),
        help="Temporal namespace (env TEMPORAL_NAMESPACE)",
    )
    group.add_argument(
        "--temporal-tls",
        action="store_true",
        default=env("TEMPORAL_TLS", "").lower() in ("1", "true", "yes"),
        help="TLS with the system's root CAs (env TEMPORAL_TLS=true)",
    )
    group.add_argument(
        "--temporal-tls-cert",
        default=env("TEMPORAL_TLS_CERT"),
        help="client certificate file, mTLS (env TEMPORAL_TLS_CERT)",
    )
    group.add_argument(
        "--temporal-tls-key", default=env("TEMPORAL_TLS_KEY"), help="env TEMPORAL_TLS_KEY"
    )
    group.add_argument(
        "--temporal-tls-ca",
        default=env("TEMPORAL_TLS_CA"),
        help="CA bundle to verify the server (env TEMPORAL_TLS_CA)",
    )
    group.add_argument(
        "--temporal-api-key-file",
        default=env("TEMPORAL_API_KEY_FILE"),
        help="API key file, implies TLS (env TEMPORAL_API_KEY_FILE)",
    )


def connection_from(args: argparse.Namespace) -> TemporalConnection:
    if bool(args.temporal_tls_cert) != bool(args.temporal_tls_key):
        raise SystemExit("--temporal-tls-cert and --temporal-tls-key go together (mTLS)")
    return TemporalConnection(
        address=args.temporal_address,
        namespace=args.temporal_namespace,
        tls=args.temporal_tls,
        tls_cert=args.temporal_tls_cert,
        tls_key=args.temporal_tls_key,
        tls_ca=args.temporal_tls_ca,
        api_key_file=args.temporal_api_key_file,
    )
