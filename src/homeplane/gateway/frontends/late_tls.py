"""Server-side TLS on a connection whose first bytes were read already (a PROXY header).

``loop.start_tls`` cannot take bytes read before it (a ClientHello that came in the same TCP
segment as the header), so this drives asyncio's SSL protocol directly and feeds them.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl


def start_tls_after(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, app: asyncio.BaseProtocol, ctx: ssl.SSLContext, already_read: bytes
) -> None:
    tls = asyncio.sslproto.SSLProtocol(loop, app, ctx, None, server_side=True, call_connection_made=True, ssl_handshake_timeout=10.0)
    transport.set_protocol(tls)
    tls.connection_made(transport)
    rest = already_read
    while rest:
        buf = tls.get_buffer(len(rest))
        n = min(len(buf), len(rest))
        buf[:n] = rest[:n]
        tls.buffer_updated(n)
        rest = rest[n:]
