"""Certificates and keys for a TLS federation with authenticated SuperNodes (Flower's mechanisms).

Flower 1.42 encrypts SuperLink traffic with TLS (``--ssl-*`` on the SuperLink, ``--root-certificates``
on SuperNodes and in the CLI's connection) and authenticates SuperNodes by an ECDSA key pair: the
public key is registered with ``flwr supernode register``, the SuperNode signs its requests with the
private key (``--auth-supernode-private-key``), and a SuperLink started with ``--enable-supernode-auth``
refuses any node whose key is not registered.

``make_certs`` writes what a test federation needs: a CA, a server certificate for the SuperLink's
host names/addresses signed by it, and one OpenSSH ECDSA (P-384) key pair per SuperNode. For real
machines, use your organisation's CA and keep each private key on its own client (README).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import ConfigError, check_output_folder


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # private keys; the public key of each is the same path + ".pub"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    """Create a private key file readable by its owner only from the first byte.

    Writing it and then chmod-ing it leaves a moment in which the key is world-readable; ``O_EXCL``
    also refuses to follow a link planted at that name. An earlier key there is removed first.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def existing_certs(out_dir: str | Path) -> list[Path]:
    """The files of an earlier ``make_certs`` in ``out_dir`` (CA, SuperLink certificate and keys, node keys)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    names = {"ca.crt", "ca.key", "server.pem", "server.key"}
    return sorted(p for p in out.iterdir() if p.name in names or p.name.startswith("supernode-"))


def make_certs(out_dir: str | Path, num_nodes: int, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
               days: int = 365, replace: bool = True) -> Certs:
    """A CA, a SuperLink certificate valid for ``hosts``, and ``num_nodes`` SuperNode key pairs.

    ``replace=False`` (``fedcollm certs``) refuses a folder that already holds a CA or keys: replacing
    them would lock out every SuperNode registered with the old ones. A local deployment's scratch
    folder (``deploy-local``) is remade on every launch.
    """
    out = check_output_folder(out_dir, "certificate folder")
    if not replace and (old := existing_certs(out)):
        raise ConfigError(f"{out} already holds certificates or keys ({', '.join(p.name for p in old[:4])}"
                          f"{', ...' if len(old) > 4 else ''}); refusing to replace them: choose an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("FedCoLLM test CA")).issuer_name(_name("FedCoLLM test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
           .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .sign(ca_key, hashes.SHA256()))

    pem, raw = serialization.Encoding.PEM, serialization.NoEncryption()
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(srv.public_bytes(pem))
    _write_private(out / "server.key", srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, raw))
    _write_private(out / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, raw))
    nodes = [node_key(out / f"supernode-{i}") for i in range(num_nodes)]
    return Certs(out / "ca.crt", out / "server.pem", out / "server.key", nodes)


def node_key(path: Path) -> Path:
    """An OpenSSH ECDSA P-384 key pair (``path`` and ``path.pub``), the form Flower's node auth reads."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.with_name(path.name + ".pub").write_bytes(pub + f" {path.name}\n".encode())
    return path
