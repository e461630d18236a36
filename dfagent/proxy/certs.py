"""Leaf certificates for intercepted CONNECT tunnels, signed by the configured CA, one per
host, made on first use and kept (in memory only) for the life of the agent."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfagent.errors import StartupError

__all__ = ["LeafCertificates"]

_VALIDITY = datetime.timedelta(days=30)


class LeafCertificates:
    def __init__(self, ca_cert: str, ca_key: str) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        except (OSError, ValueError) as exc:
            raise StartupError(f"proxy.ca_cert: cannot load {ca_cert}: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise StartupError(f"proxy.ca_key: cannot load {ca_key}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise StartupError("proxy.ca_key: expected an EC or RSA private key")
        self._ca_key = key
        try:  # where each leaf is loaded from (see _make): refused now, not at the first CONNECT
            tempfile.TemporaryDirectory(prefix="dfagent-leaf-").cleanup()
        except OSError as exc:
            raise StartupError(
                f"proxy.intercept: no temporary directory to load leaf certificates from: {exc}"
            ) from exc
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._making: dict[str, asyncio.Future[ssl.SSLContext]] = {}

    async def context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `host`."""
        context = self._contexts.get(host)
        if context is not None:
            return context
        making = self._making.get(host)
        if making is None:
            making = asyncio.get_running_loop().create_future()
            self._making[host] = making
            try:
                context = await asyncio.to_thread(self._make, host)
                self._contexts[host] = context
                making.set_result(context)
            except BaseException as exc:
                making.set_exception(exc)
                making.exception()
                raise
            finally:
                del self._making[host]
            return context
        return await asyncio.shield(making)

    def _make(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName([name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The ssl module loads a chain only from files: they exist just for that call, in a 0700
        # directory, and the key in them is encrypted with a password that lives only here.
        password = secrets.token_bytes(32)
        with tempfile.TemporaryDirectory(prefix="dfagent-leaf-") as directory:
            cert_path, key_path = Path(directory, "leaf.crt"), Path(directory, "leaf.key")
            cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.BestAvailableEncryption(password),
                    )
                )
            context.load_cert_chain(cert_path, key_path, password=password)
        return context
