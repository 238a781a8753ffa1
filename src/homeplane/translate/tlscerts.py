"""Read a ``kubernetes.io/tls`` Secret into a :class:`TLSCert`, or say why it is unusable."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from homeplane.api.models.core import Secret
from homeplane.translate.snapshot import PrivateBytes, Ref, TLSCert


class CertificateError(ValueError):
    pass


def load_tls_secret(secret: Secret, ref: Ref) -> TLSCert:
    cert_pem = secret.value("tls.crt")
    key_pem = secret.value("tls.key")
    if not cert_pem or not key_pem:
        missing = [k for k, v in (("tls.crt", cert_pem), ("tls.key", key_pem)) if not v]
        raise CertificateError(f"Secret {ref.namespace}/{ref.name} has no {' or '.join(missing)}")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise CertificateError(f"Secret {ref.namespace}/{ref.name}: tls.crt is not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"Secret {ref.namespace}/{ref.name}: tls.key is not a PEM private key ({e})") from None
    leaf = certs[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError(f"Secret {ref.namespace}/{ref.name}: tls.key does not match the certificate in tls.crt")
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(cn[0].value)] if cn else []
    return TLSCert(
        secret=ref,
        cert_pem=cert_pem,
        key_pem=PrivateBytes(key_pem),
        dns_names=tuple(n.lower() for n in names),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )
