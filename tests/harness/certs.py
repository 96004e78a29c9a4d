"""Throwaway PKI for the TLS broker and its clients, built with trustme."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import trustme

__all__ = [
    "Pki",
    "expired_client",
    "foreign_ca",
    "foreign_client",
    "issue_client",
    "make_pki",
    "mismatched_key",
]


@dataclass
class Pki:
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    # The CA object stays reachable so tests (and the Observer) can issue more certs.
    authority: trustme.CA = field(repr=False, compare=False)
    directory: Path = field(default=Path("."))
    client_cn: str = "tibber-bridge-test"

    def issue_client(
        self,
        cn: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        """Another client cert from the same CA, written as <cn>.crt / <cn>.key."""
        return issue_client(
            self.authority, self.directory, cn, not_before=not_before, not_after=not_after
        )


def _write_key(path: Path, pem: bytes) -> None:
    # Create with 0600 from the start so the key is never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)  # O_CREAT's mode is ignored for an existing file


def _write_leaf(leaf: trustme.LeafCert, crt: Path, key: Path) -> None:
    crt.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    _write_key(key, leaf.private_key_pem.bytes())


def issue_client(
    ca: trustme.CA,
    directory: Path,
    cn: str,
    *,
    stem: str | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a client cert with a CN (mosquitto's use_identity_as_username needs one)."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(cn, common_name=cn, not_before=not_before, not_after=not_after)
    stem = stem or cn
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    _write_leaf(leaf, crt, key)
    return crt, key


def make_pki(directory: Path, *, client_cn: str = "tibber-bridge-test") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server_crt, server_key = directory / "server.crt", directory / "server.key"
    _write_leaf(server, server_crt, server_key)
    client_crt, client_key = issue_client(ca, directory, client_cn, stem="client")
    return Pki(
        ca=ca_path,
        server_crt=server_crt,
        server_key=server_key,
        client_crt=client_crt,
        client_key=client_key,
        authority=ca,
        directory=directory,
        client_cn=client_cn,
    )


# --- negative-test material -------------------------------------------------------------------


def foreign_client(directory: Path, cn: str = "tibber-bridge-test") -> tuple[Path, Path]:
    """A client cert with the right CN from a CA the broker does not trust."""
    return issue_client(trustme.CA(), directory, cn, stem="foreign-client")


def expired_client(pki: Pki, cn: str | None = None) -> tuple[Path, Path]:
    """A client cert from the broker's own CA whose validity ended yesterday."""
    now = dt.datetime.now(dt.UTC)
    return issue_client(
        pki.authority,
        pki.directory,
        cn or pki.client_cn,
        stem="expired-client",
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )


def foreign_ca(directory: Path) -> Path:
    """A CA file that did not sign the broker's server cert (server verification must fail)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "foreign-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def mismatched_key(directory: Path) -> Path:
    """A valid private key that belongs to no cert we issued (load_cert_chain must reject it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mismatched.key"
    _write_key(path, trustme.CA().issue_cert("nobody").private_key_pem.bytes())
    return path
