"""TLS for the RPC port: the server's and clients' SSLContexts, and certificates for dev networks.

Server and clients speak TLS 1.2 or newer (1.3 where both sides have it). A client always
verifies the node's certificate and that it names the host it dialled (DNS name or IP
address), against a CA file it is given or else the system's trust store.

`make_ca` and `make_node_certificate` are for development and test networks (`python -m
testnet up`): a private CA whose certificate every client is handed (--ca FILE /
BAYLEDGER_CA), and one certificate per node signed by it. Production nodes should get
their certificates from the operator's own CA (docs/OPERATIONS.md, "TLS on the RPC port").
Private keys are written mode 0600, created that way.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.keys import create_private_file
from node.wire import ERROR_TLS_REQUIRED  # in __all__: a name of this module too

TLS_VERSION_MIN = ssl.TLSVersion.TLSv1_2
TLS_HANDSHAKE_TIMEOUT_MS = 10_000      # a client must finish its handshake in this time (server side)
TLS_RECORD_HANDSHAKE = 0x16            # first byte of every TLS ClientHello record
PEM_FILE_BYTES_MAX = 1024 * 1024       # a cert chain or key file; real ones are a few KiB
PRIVATE_KEY_MODE = 0o600
CERT_FILE_MODE = 0o644
CA_VALID_DAYS = 3650
NODE_CERT_VALID_DAYS = 825             # the longest validity some TLS clients accept
CLOCK_SKEW_S = 3600                    # certificates are valid from an hour ago: clocks differ

# Answered, in plain msgpack-RPC, to a client that connects to a TLS node without TLS.
TLS_REQUIRED_MESSAGE = ("this node serves RPC over TLS only; connect with TLS (--ca FILE or BAYLEDGER_CA)")


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; `which` is "cert", "key" or "ca"."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


def _read(path: str | Path, which: str, what: str) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(PEM_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise TlsError(which, f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsError(which, f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise TlsError(which, f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > PEM_FILE_BYTES_MAX:
        raise TlsError(which, f"{what} {path} is larger than {PEM_FILE_BYTES_MAX} bytes")
    return data


def _certificates(data: bytes, path: str | Path, which: str, what: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(which, f"{what} {path} holds no PEM certificate") from None
    return chain


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def server_context(cert_file: str | Path, key_file: str | Path, *,
                   now: datetime.datetime | None = None) -> ssl.SSLContext:
    """The RPC server's context: cert_file is the node's certificate (then any intermediates),
    key_file its unencrypted private key. TlsError says which file is wrong and why."""
    chain = _certificates(_read(cert_file, "cert", "certificate file"), cert_file, "cert", "certificate file")
    key_data = _read(key_file, "key", "key file")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TlsError("key", f"key file {key_file} is encrypted; the node needs it unencrypted (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError("key", f"key file {key_file} holds no PEM private key") from None
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        raise TlsError("key", f"key file {key_file} does not match the certificate in {cert_file}")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if chain[0].not_valid_after_utc < now:
        raise TlsError("cert", f"certificate in {cert_file} expired on {chain[0].not_valid_after_utc:%Y-%m-%d}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSION_MIN
    # A TLS 1.2 client could renegotiate again and again on one connection: a full handshake of
    # server work each time, past the connection limits. OpenSSL 3 refuses it by default (checked
    # with `openssl s_client -tls1_2` and R); this says so whatever OpenSSL the node is linked to.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as exc:   # checked above; a race with a rewrite of the files
        raise TlsError("cert", f"certificate {cert_file} and key {key_file} cannot be loaded: {exc}") from None
    return context


def certificate_not_after(cert_file: str | Path) -> datetime.datetime:
    """When the first certificate in cert_file (a node's own, as server_context reads it) expires."""
    return _certificates(_read(cert_file, "cert", "certificate file"), cert_file, "cert",
                         "certificate file")[0].not_valid_after_utc


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client's context: verify the node's certificate and host name against ca_file's
    certificates, or the system's trust store when ca_file is None."""
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        data = _read(ca_file, "ca", "CA file")
        _certificates(data, ca_file, "ca", "CA file")
        # Only the given CA: a dev network's CA must not widen, nor be widened by, the system store.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
        except ssl.SSLError as exc:
            raise TlsError("ca", f"CA file {ca_file} cannot be loaded: {exc}") from None
    context.minimum_version = TLS_VERSION_MIN
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- certificates for development networks -------------------------------------------------------

def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_cert(path: Path, cert: x509.Certificate, overwrite: bool) -> None:
    create_private_file(path, cert.public_bytes(serialization.Encoding.PEM), CERT_FILE_MODE, overwrite=overwrite)


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(seconds=CLOCK_SKEW_S), now + datetime.timedelta(days=days)


def make_ca(cert_path: str | Path, key_path: str | Path, name: str = "Bayledger dev CA", *,
            valid_days: int = CA_VALID_DAYS, overwrite: bool = False) -> None:
    """A CA for a development network: an ECDSA P-256 key (0600) and its self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(valid_days)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    create_private_file(key_path, _key_pem(key), PRIVATE_KEY_MODE, overwrite=overwrite)
    _write_cert(Path(cert_path), cert, overwrite)


def subject_alternative_names(hosts: Iterable[str], loopback: bool = True) -> list[x509.GeneralName]:
    """SANs for 127.0.0.1 and localhost (unless not loopback) and each host (an IP address or a DNS
    name); wildcard bind addresses (0.0.0.0, ::) are no name a client dials and are left out."""
    names: list[x509.GeneralName] = []
    for host in (*(("127.0.0.1", "localhost") if loopback else ()), *hosts):
        host = host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name: x509.GeneralName = x509.DNSName(host.lower())
        else:
            if address.is_unspecified:
                continue
            name = x509.IPAddress(address)
        if name not in names:
            names.append(name)
    return names


def make_node_certificate(ca_cert_path: str | Path, ca_key_path: str | Path, cert_path: str | Path,
                          key_path: str | Path, node_name: str, hosts: Iterable[str] = (), *,
                          valid_days: int = NODE_CERT_VALID_DAYS, overwrite: bool = False,
                          loopback: bool = True) -> None:
    """A node's RPC certificate signed by the CA, for the names in `subject_alternative_names(hosts)`."""
    ca_cert = _certificates(_read(ca_cert_path, "ca", "CA certificate"), ca_cert_path, "ca", "CA certificate")[0]
    try:
        ca_key = serialization.load_pem_private_key(_read(ca_key_path, "ca", "CA key"), password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise TlsError("ca", f"CA key {ca_key_path} holds no unencrypted PEM private key") from None
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(valid_days)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(subject_alternative_names(hosts, loopback)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    create_private_file(key_path, _key_pem(key), PRIVATE_KEY_MODE, overwrite=overwrite)
    _write_cert(Path(cert_path), cert, overwrite)


__all__ = ["TlsError", "server_context", "certificate_not_after", "client_context", "make_ca",
           "make_node_certificate", "subject_alternative_names", "TLS_HANDSHAKE_TIMEOUT_MS", "TLS_RECORD_HANDSHAKE",
           "ERROR_TLS_REQUIRED", "TLS_REQUIRED_MESSAGE"]
