"""The plain values of a Secret (or ConfigMap) in the manifests.

``stringData`` and base64 ``data``; a SOPS-encrypted object (its ``sops`` metadata, or values
still ``ENC[…]``) gives nothing, so a value the user supplies (``--set``, ``--vars``, the
environment) is used instead of ciphertext.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any


def secret_values(data: dict[str, Any], kind: str = "Secret") -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(data, dict) or isinstance(data.get("sops"), dict):
        return out
    string_data = data.get("stringData")
    for k, v in (string_data.items() if isinstance(string_data, dict) else ()):
        out[str(k)] = str(v)
    raw = data.get("data")
    for k, v in (raw.items() if isinstance(raw, dict) else ()):
        if kind == "Secret":
            try:
                out.setdefault(str(k), base64.b64decode(str(v), validate=True).decode())
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
        else:
            out.setdefault(str(k), str(v))
    return {k: v for k, v in out.items() if not v.startswith("ENC[")}
