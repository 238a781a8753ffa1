"""Controllers that hand out addresses, before translation runs.

``clusterip`` places ClusterIPs in the service CIDR, ``lbipam`` gives LoadBalancer Services
(and each Gateway's generated Service, ``gatewayservice``) addresses from Cilium pools, and
``loopback`` gives a Gateway with no address on this machine a 127.0.1.x of its own. Each is
pure or reads and writes only the state store; translate receives their results as inputs and
no data plane allocates anything.
"""
