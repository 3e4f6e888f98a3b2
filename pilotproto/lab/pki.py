"""
A throwaway certificate authority and beacon certificate, for the lab and
for tests: the beacon's TLS relay needs a certificate its nodes can check,
and these addresses have no public CA.

``make_beacon_pki(directory, addresses)`` writes ``ca.pem`` (give it to
nodes as ``--beacon-ca``), ``beacon.pem`` and ``beacon.key`` (the beacon's
``--tls-cert`` and ``--tls-key``).  The beacon certificate names every
address as an IP SAN (service_identity checks IP addresses only against IP
SANs, never against the common name) and any DNS names given.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)


@attrs.frozen
class BeaconPKI:
    ca_file: str
    cert_file: str
    key_file: str
    #: SHA-256 of the beacon certificate (DER), hex: a ``--beacon-fingerprint``
    fingerprint: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "pilot lab CA"):
    """A self-signed CA: ``(certificate, private key)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca_cert, ca_key, addresses=(), dns_names=(), common_name: str = "pilot beacon"):
    """A TLS server certificate signed by the CA: ``(certificate, private key)``."""
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses] + [x509.DNSName(n) for n in dns_names]
    if not sans:
        raise ValueError("a beacon certificate needs at least one address or name")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_beacon_pki(directory: str, addresses=(), dns_names=()) -> BeaconPKI:
    """Write a new CA and a beacon certificate for ``addresses`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    ca_cert, ca_key = make_ca()
    cert, key = make_leaf(ca_cert, ca_key, addresses, dns_names)
    pki = BeaconPKI(
        ca_file=os.path.join(directory, "ca.pem"),
        cert_file=os.path.join(directory, "beacon.pem"),
        key_file=os.path.join(directory, "beacon.key"),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )
    _write(pki.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(pki.key_file, key_pem, 0o600)
    return pki
