"""Certificates for the local control plane, made with the openssl CLI.

One CA signs the apiserver's serving certificate and the client certificates (admin and
one per control-plane component); a separate RSA key pair signs service-account tokens.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = "3650"


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, user: str) -> tuple[Path, Path]:
        stem = user.replace(":", "-")  # system:node:x and friends
        return self.directory / f"{stem}.crt", self.directory / f"{stem}.key"

    def ensure(self, clients: dict[str, str], extra_ips: tuple[str, ...] = ()) -> None:
        """Create whatever is missing. ``clients`` maps a user (CN) to its group (O);
        ``extra_ips`` are further addresses the apiserver serves on (the node network's host
        side). A serving certificate made for other addresses is made anew."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.ca_cert.exists():
            _openssl(
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                VALID_DAYS,
                "-subj",
                "/CN=tempotrain-local-ca",
                "-keyout",
                self.ca_key,
                "-out",
                self.ca_cert,
            )
        # 10.96.0.1: the `kubernetes` Service, which in-cluster clients dial.
        names = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        names += "DNS:kubernetes.default.svc.cluster.local,"
        names += ",".join(f"IP:{ip}" for ip in ("127.0.0.1", "10.96.0.1", *extra_ips))
        sans_record = self.directory / "apiserver.sans"
        if not self.serving_cert.exists() or _read(sans_record) != names:
            self._signed(
                self.serving_cert,
                self.serving_key,
                "/CN=kube-apiserver",
                extensions=f"subjectAltName={names}\nextendedKeyUsage=serverAuth",
            )
            sans_record.write_text(names)
        for user, group in clients.items():
            cert, key = self.client_cert(user)
            if not cert.exists():
                self._signed(
                    cert, key, f"/O={group}/CN={user}", extensions="extendedKeyUsage=clientAuth"
                )
        if not self.service_account_key.exists():
            _openssl("genrsa", "-out", self.service_account_key, "2048")
            _openssl(
                "rsa", "-in", self.service_account_key, "-pubout", "-out", self.service_account_pub
            )

    def write_kubeconfig(self, path: Path, server: str, user: str) -> Path:
        """A kubeconfig for ``user`` (its client certificate) at ``server``. The CA, the
        certificate and the key are referenced by path, not embedded: kr8s writes embedded
        ones to temporary files it never removes (a private key in /tmp per API client)."""
        cert, key = self.client_cert(user)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tempotrain-local",
                    "cluster": {
                        "server": server,
                        "certificate-authority": str(self.ca_cert.resolve()),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(cert.resolve()),
                        "client-key": str(key.resolve()),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "tempotrain-local",
                    "context": {"cluster": "tempotrain-local", "user": user},
                }
            ],
            "current-context": "tempotrain-local",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def _signed(self, cert: Path, key: Path, subject: str, extensions: str) -> None:
        csr = cert.with_suffix(".csr")
        ext = cert.with_suffix(".ext")
        ext.write_text(extensions + "\n")
        _openssl(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            key,
            "-out",
            csr,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca_cert,
            "-CAkey",
            self.ca_key,
            "-CAcreateserial",
            "-days",
            VALID_DAYS,
            "-extfile",
            ext,
            "-out",
            cert,
        )
        csr.unlink()
        ext.unlink()


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
