"""Readiness for systemd (``Type=notify``): ``READY=1`` once serving, ``STOPPING=1`` on the way
out, over ``$NOTIFY_SOCKET`` as sd_notify(3) describes; nothing when not run by systemd."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to the service manager; False when there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True
