"""Throwaway TLS material for the local broker (:mod:`app.dev.localkafka`): a CA and a broker
certificate it signed, as the PEM files Kafka 4 reads without keytool.

For tests and local trials only: the keys are unencrypted files under ``directory`` and the
certificates are valid for one day. Needs ``cryptography`` (the ``dev`` extra); it is imported
only here, so the worker never loads it.

Failure semantics: an unwritable ``directory`` raises :class:`OSError`; nothing else fails.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one broker identity.

    ``ca``: the CA certificate clients trust (``MPCIO_KAFKA_SSL_CAFILE``).
    ``keystore``: the broker's private key (PKCS#8, unencrypted) followed by its certificate,
    Kafka's ``ssl.keystore.type=PEM`` file.
    """

    ca: Path
    keystore: Path


def generate_tls(
    directory: Path, names: Sequence[str] = LOOPBACK_NAMES, *, ca_name: str = "mpcio test CA"
) -> TlsFiles:
    """Write a fresh CA (``ca.pem``) and a broker certificate for ``names`` signed by it
    (``broker.pem``, key first) into ``directory``; return their paths.

    ``names``: the certificate's subject alternative names; an entry that parses as an IP
    address becomes an IP SAN, anything else a DNS SAN. Every call makes a new CA, so the
    ``ca`` of one call is a wrong CA for the broker of another (the wrong-CA tests use that).
    """
    from cryptography import x509  # noqa: PLC0415 - dev-only dependency, loaded on use
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    # a minute of slack: the broker's clock reads the same time, but not the same instant
    valid_from, valid_to = now - dt.timedelta(minutes=1), now + dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=directory / "ca.pem", keystore=directory / "broker.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.keystore.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    files.keystore.chmod(0o600)
    return files
