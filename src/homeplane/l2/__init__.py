"""L2 announcements (Cilium's CiliumL2AnnouncementPolicy): which node answers ARP for a
LoadBalancer IP, elected per Service, and the ARP responder that answers for it.

``arp`` is the wire format (sans-IO), ``policy`` decides what a node may announce, ``lease``
elects one announcer per Service on the shared state store, ``responder`` answers on the wire.
"""
