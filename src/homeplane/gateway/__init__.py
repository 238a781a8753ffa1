"""The HTTP data plane: what Envoy Gateway's proxies do, from the Snapshot.

Layers, each importing only those above it in this list (``tests/structure/test_layers.py``):

``base``, ``tls`` - leaves: settings, connection facts, exchange states, the small interfaces
    layers reach each other through (``DataPlaneHooks``, ``PortHooks``); TLS contexts.
``routing/`` - pure request logic, no I/O:
    ``router`` (per-port tables: host -> listener -> virtual host -> rule), ``paths`` (path
    normalisation), ``headers`` (hop-by-hop, request ids, client IP detection, Envoy's command
    operators), ``filters`` (header modifiers, redirects, rewrites).
``upstreams/`` - backends:
    ``pool`` (the pooled-connection base and ``ResponseHandler``, what connections call back),
    ``http1`` and ``http2`` (HTTP/1.1 and multiplexed h2c connections), ``connect`` (opening
    one of them, over TLS when a BackendTLSPolicy says so), ``cluster`` (endpoints, in-flight
    counts, outlier ejection, circuit breaking), ``balancer`` (load-balancing policies),
    ``health`` (active health checks).
``policies/`` - SecurityPolicy and BackendTrafficPolicy behaviour on a request:
    ``auth`` (extAuth, basicAuth, apiKeyAuth, JWT, authorization, in Envoy Gateway's filter
    order), ``authz``, ``jwtauth``, ``cors``, ``compression``.
``exchange`` - one request through the proxy, whatever the client protocol: route, policies,
    backend choice, retries, deadlines, the response relayed to the client's ``Sink``.
``frontends/`` - client protocols:
    ``http1`` (llhttp), ``http2`` (h2), ``fastlane`` + ``_fastlane.c`` (plain HTTP/1.1 in C),
    ``proxyproto`` and ``tlspeek`` (sans-IO readers of what comes before HTTP), ``late_tls``,
    ``streams`` (TCP, UDP and TLS-passthrough listeners).
``compile`` - the Snapshot lowered to what the data plane runs: port tables, route actions,
    listener settings, cluster specs (pure; golden-tested).
``server`` - sockets and Snapshot swaps: ``DataPlane``, ``PortServer``; ``workers`` runs more
    data-plane processes on the same sockets.
"""
