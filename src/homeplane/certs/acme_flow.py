"""One ACME order, with the ``acme`` library (certbot's client): account, order, challenges,
finalize, chain. Blocking (the library is), so the controller runs it in a worker thread and
the solvers' present/cleanup calls come back to the event loop.

The account key is the issuer's ``privateKeySecretRef``: registered once, found again by key
afterwards (``onlyReturnExisting``), as cert-manager does.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from homeplane.certs.keys import PrivateKey

log = logging.getLogger("homeplane.certs.acme")
USER_AGENT = "homeplane-cert-manager"


@dataclass(frozen=True)
class Challenge:
    domain: str  # the identifier (a wildcard's base name for DNS-01)
    type: str  # dns-01 | http-01
    name: str  # DNS-01: the TXT record name; HTTP-01: the URL path
    value: str  # DNS-01: the TXT value; HTTP-01: the key authorization
    wildcard: bool = False


class ACMEError(RuntimeError):
    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def _jwk(key: PrivateKey) -> jose.JWK:
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key)
    raise ACMEError("an ACME account key must be RSA or ECDSA", permanent=True)


def _alg(key: PrivateKey) -> jose.JWASignature:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}[key.curve.key_size]
    return jose.RS256


def order(
    server: str, account_key: PrivateKey, email: str, csr_pem: bytes, challenge_types: Callable[[str], str],
    present: Callable[[Challenge], None], cleanup: Callable[[Challenge], None], ca_bundle: bytes | None = None,
    skip_tls_verify: bool = False, timeout: float = 120.0,
) -> str:
    """Run an order to the end; returns the PEM chain. ``challenge_types(domain)`` says which
    challenge type the chosen solver answers for that domain."""
    verify: bool | str = not skip_tls_verify
    bundle_file = None
    if ca_bundle and not skip_tls_verify:
        fd, bundle_file = tempfile.mkstemp(prefix="homeplane-acme-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(ca_bundle)
        verify = bundle_file
    presented: list[Challenge] = []
    try:
        jwk = _jwk(account_key)
        net = client.ClientNetwork(jwk, alg=_alg(account_key), user_agent=USER_AGENT, verify_ssl=verify)
        try:
            directory = client.ClientV2.get_directory(server, net)
        except Exception as e:  # requests' and acme's errors, all of them network-level here
            raise ACMEError(f"ACME server {server}: {type(e).__name__}: {e}") from None
        acme = client.ClientV2(directory, net=net)
        reg = messages.NewRegistration.from_data(email=email or None, terms_of_service_agreed=True)
        try:
            acme.new_account(reg)
        except errors.ConflictError as e:  # already registered with this key
            net.account = acme.query_registration(messages.RegistrationResource(uri=e.location, body=messages.Registration()))
        orderr = acme.new_order(csr_pem)
        for authz in orderr.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            domain = authz.body.identifier.value
            wildcard = bool(authz.body.wildcard)
            want = challenge_types(("*." if wildcard else "") + domain)
            body = next((c for c in authz.body.challenges if c.chall.typ == want), None)
            if body is None:
                raise ACMEError(f"the ACME server offers no {want} challenge for {domain}", permanent=True)
            if isinstance(body.chall, challenges.DNS01):
                ch = Challenge(domain, "dns-01", body.chall.validation_domain_name(domain), body.chall.validation(jwk), wildcard)
            elif isinstance(body.chall, challenges.HTTP01):
                ch = Challenge(domain, "http-01", body.chall.path, body.chall.validation(jwk), wildcard)
            else:
                raise ACMEError(f"challenge type {want} is not supported", permanent=True)
            presented.append(ch)  # cleaned up even when presenting fails half way
            present(ch)
            acme.answer_challenge(body, body.chall.response(jwk))
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
        try:
            done = acme.poll_and_finalize(orderr, deadline=deadline)
        except errors.ValidationError as e:
            problems = "; ".join(
                f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
                for a in e.failed_authzrs for c in a.body.challenges if c.error is not None
            )
            raise ACMEError(f"ACME validation failed: {problems or e}") from None
        except errors.TimeoutError:
            raise ACMEError(f"ACME order not ready after {timeout:.0f} s") from None
        return done.fullchain_pem
    except messages.Error as e:
        raise ACMEError(f"ACME server said: {e}", permanent=e.typ.endswith(("rejectedIdentifier", "unsupportedIdentifier", "caa"))) from None
    except ACMEError:
        raise
    except Exception as e:  # requests' errors, the library's IssuanceError, a key it cannot use
        raise ACMEError(f"ACME order with {server}: {type(e).__name__}: {e}") from None
    finally:
        for ch in presented:
            try:
                cleanup(ch)
            except Exception as e:  # cleanup is best effort, as cert-manager's
                log.warning("could not clean up the %s challenge for %s: %s", ch.type, ch.domain, e)
        if bundle_file:
            os.unlink(bundle_file)
