"""Test helper: a self-signed certificate made by the openssl command, as config.toml tells a household to make one."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(
    folder: Path, names: tuple[str, ...] = ("house.test",), ips: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[Path, Path]:
    """(certificate, key) in PEM, valid for `names` and `ips`."""
    cert, key = folder / "web.crt", folder / "web.key"
    alt = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=spkidd",
         "-addext", f"subjectAltName={alt}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
