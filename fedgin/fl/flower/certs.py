"""Certificates and keys for a secure Flower deployment: a CA, the SuperLink's TLS certificate (signed by the
CA, valid for the SuperLink's addresses) and one authentication key pair per SuperNode (EC P-384 in OpenSSH
format, as ``flwr supernode register`` and ``flower-supernode --auth-supernode-private-key`` read them).

Private keys are written with mode 0600. The CA key signs the SuperLink's certificate and is needed again only
to renew it: keep it off the SuperLink machine.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgin.fl.rundir import atomic_write


@dataclass(frozen=True)
class ServerCertificates:
    ca: Path  # --ssl-ca-certfile (SuperLink), --root-certificates (SuperNodes), root-certificates (flwr CLI)
    cert: Path  # --ssl-certfile
    key: Path  # --ssl-keyfile


@dataclass(frozen=True)
class NodeKeys:
    private: Path  # flower-supernode --auth-supernode-private-key
    public: Path  # flwr supernode register <public>


def _write_key(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o600)  # private from the start: the key is never readable by others


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgin"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_server_certificates(out: str | Path, hosts: list[str], days: int = 365) -> ServerCertificates:
    """A new CA (``ca.crt``, ``ca.key``) and a SuperLink certificate (``superlink.crt``, ``superlink.key``) for
    ``hosts`` (IP addresses or DNS names the SuperNodes and the coordinator use to reach the SuperLink)."""
    if not hosts:
        raise ValueError("the SuperLink certificate needs at least one host name or IP address")
    out = Path(out)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("fedgin CA")).issuer_name(_name("fedgin CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA384()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    result = ServerCertificates(out / "ca.crt", out / "superlink.crt", out / "superlink.key")
    _write_key(out / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    atomic_write(result.ca, ca_cert.public_bytes(pem))
    _write_key(result.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    atomic_write(result.cert, cert.public_bytes(pem))
    return result


def write_node_keys(out: str | Path, name: str) -> NodeKeys:
    """A SuperNode's authentication key pair: ``<name>.key`` (stays at the site) and ``<name>.pub`` (registered
    at the SuperLink with ``flwr supernode register``)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not usable as a key file name")
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(out / f"{name}.key", out / f"{name}.pub")
    _write_key(keys.private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    atomic_write(keys.public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                            serialization.PublicFormat.OpenSSH) + b"\n")
    return keys
