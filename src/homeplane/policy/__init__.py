"""Network policy: NetworkPolicy and Cilium's policies, compiled and enforced where traffic passes
through homeplane, and explained (``homeplane policy trace``).

``rules`` reads the policies into one form, ``identity`` decides who the pods are without
Kubernetes, ``verdict`` decides one connection (and request) with its reasons, ``enforce`` turns
decisions into what the data planes apply.
"""
