"""Certificates for the local control plane, made with the openssl CLI.

One CA signs the apiserver's serving certificate and the client certificates (admin and
one per control-plane component); a separate RSA key pair signs service-account tokens.
"""

from __future__ import annotations

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
        return self.directory / f"{user}.crt", self.directory / f"{user}.key"

    def ensure(self, clients: dict[str, str]) -> None:
        """Create whatever is missing. ``clients`` maps a user (CN) to its group (O)."""
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
        if not self.serving_cert.exists():
            self._signed(
                self.serving_cert,
                self.serving_key,
                "/CN=kube-apiserver",
                extensions="subjectAltName=DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                "IP:127.0.0.1,IP:10.96.0.1\nextendedKeyUsage=serverAuth",
            )
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


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
