"""Private keys, CSRs and self-signed/CA-signed certificates as cert-manager makes them.

Key algorithm and size from ``spec.privateKey`` (RSA 2048/3072/4096, ECDSA 256/384/521,
Ed25519), written in ``PKCS1`` (RSA) or ``PKCS8`` encoding. Certificates carry the
Certificate's dnsNames, ipAddresses, URIs and email addresses as SANs, its commonName (else
none), ``isCA`` as basic constraints and its ``usages`` as key usages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}
_KEY_USAGES = {
    "digital signature": "digital_signature", "content commitment": "content_commitment",
    "key encipherment": "key_encipherment", "data encipherment": "data_encipherment",
    "key agreement": "key_agreement", "cert sign": "key_cert_sign", "crl sign": "crl_sign",
    "encipher only": "encipher_only", "decipher only": "decipher_only",
}
_EXT_USAGES = {
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING, "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}


class KeyError_(ValueError):
    """A privateKey spec cert-manager would refuse (reason: the field and the allowed values)."""


def generate_key(algorithm: str = "RSA", size: int | None = None) -> PrivateKey:
    if algorithm == "RSA":
        size = size or 2048
        if size not in (2048, 3072, 4096, 8192):
            raise KeyError_(f"spec.privateKey.size: RSA key size {size} is not 2048, 3072, 4096 or 8192")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if algorithm == "ECDSA":
        curve = _CURVES.get(size or 256)
        if curve is None:
            raise KeyError_(f"spec.privateKey.size: ECDSA key size {size} is not 256, 384 or 521")
        return ec.generate_private_key(curve())
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyError_(f"spec.privateKey.algorithm: {algorithm!r} is not RSA, ECDSA or Ed25519")


def key_pem(key: PrivateKey, encoding: str = "PKCS1") -> bytes:
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if encoding == "PKCS1" and isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError("unsupported private key type")
    return key


def key_matches(key: PrivateKey, algorithm: str, size: int | None) -> bool:
    """Whether an existing key still satisfies the spec (rotationPolicy: Never keeps it only then)."""
    if algorithm == "RSA":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == (size or 2048)
    if algorithm == "ECDSA":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == (size or 256)
    return isinstance(key, ed25519.Ed25519PrivateKey)


@dataclass(frozen=True)
class Subject:
    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    usages: tuple[str, ...] = ("digital signature", "key encipherment")
    is_ca: bool = False

    def _san(self) -> list[x509.GeneralName]:
        out: list[x509.GeneralName] = [x509.DNSName(n) for n in self.dns_names]
        out += [x509.IPAddress(ipaddress.ip_address(a)) for a in self.ip_addresses]
        out += [x509.UniformResourceIdentifier(u) for u in self.uris]
        out += [x509.RFC822Name(e) for e in self.emails]
        return out

    def name(self) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)] if self.common_name else [])


def _sig_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def csr_pem(key: PrivateKey, subject: Subject) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(subject.name())
    if subject._san():
        b = b.add_extension(x509.SubjectAlternativeName(subject._san()), critical=False)
    return b.sign(key, _sig_hash(key)).public_bytes(serialization.Encoding.PEM)


def sign(subject: Subject, public_key: object, issuer_key: PrivateKey, issuer_cert: x509.Certificate | None,
         duration: dt.timedelta, now: dt.datetime | None = None) -> x509.Certificate:
    """A certificate for ``public_key``: self-signed when ``issuer_cert`` is None (the issuer is the subject)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    import secrets

    usages = {v: False for v in _KEY_USAGES.values()}
    for u in subject.usages:
        if u in _KEY_USAGES:
            usages[_KEY_USAGES[u]] = True
    if subject.is_ca:
        usages["key_cert_sign"] = True
    ext = [_EXT_USAGES[u] for u in subject.usages if u in _EXT_USAGES]
    b = (
        x509.CertificateBuilder()
        .subject_name(subject.name())
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject.name())
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now)
        .not_valid_after(now + duration)
        .add_extension(x509.BasicConstraints(ca=subject.is_ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usages), critical=True)
    )
    if ext:
        b = b.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
    if subject._san():
        b = b.add_extension(x509.SubjectAlternativeName(subject._san()), critical=not subject.common_name)
    return b.sign(issuer_key, _sig_hash(issuer_key))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
