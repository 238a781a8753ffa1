"""The HTTP data plane: what Envoy Gateway's proxies do, from the Snapshot.

Layers, from pure to I/O:

* :mod:`router` - per-port routing tables compiled from the Snapshot; a request's
  (host, method, path, headers, query) -> the matching rule, or nothing (404).
* :mod:`headers`, :mod:`filters` - Envoy command operators in header values,
  header modifiers, redirects and rewrites as pure functions.
* :mod:`balancer` - load-balancing policies over a backend pool's endpoints.
* :mod:`upstream` - HTTP/1.1 connections to backends, pooled with keep-alive.
* :mod:`exchange` - one request through the proxy, whatever the client protocol.
* :mod:`http1`, :mod:`http2` - the client-facing protocols on asyncio.
* :mod:`server` - listeners, TLS, port mapping, atomic Snapshot swaps.
"""
