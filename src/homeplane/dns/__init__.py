"""The DNS server: cluster zone (Kubernetes DNS spec, CoreDNS ``kubernetes`` semantics),
gateway zone (k8s_gateway semantics), templates, forwarding and a cache, all answered
from the Snapshot. See ``README.md`` in this folder.
"""
