"""Which kind a kubectl-style name means, among every kind the manifests hold.

Served kinds resolve through the registry (plurals, ``svc``, ``gtw``, ``cert`` …); any other
loaded kind by its name, plural or the short name kubectl and flux give it (``hr``,
``ocirepo``, ``deploy``, ``es`` …), with ``KIND.GROUP`` to pick one of two kinds that share a
name.
"""

from __future__ import annotations

from typing import Iterable

from homeplane.api import registry

# kubectl's and the CRDs' short names for kinds homeplane loads but does not serve
SHORT_NAMES = {
    "hr": "helmrelease",
    "hrepo": "helmrepository",
    "helmrepo": "helmrepository",
    "ocirepo": "ocirepository",
    "gitrepo": "gitrepository",
    "deploy": "deployment",
    "sts": "statefulset",
    "ds": "daemonset",
    "rs": "replicaset",
    "po": "pod",
    "pvc": "persistentvolumeclaim",
    "pv": "persistentvolume",
    "ing": "ingress",
    "sa": "serviceaccount",
    "cj": "cronjob",
    "es": "externalsecret",
    "css": "clustersecretstore",
    "pdb": "poddisruptionbudget",
    "hpa": "horizontalpodautoscaler",
    "btp": "backendtrafficpolicy",
    "ctp": "clienttrafficpolicy",
    "eep": "envoyextensionpolicy",
    "cnp": "ciliumnetworkpolicy",
    "ccnp": "ciliumclusterwidenetworkpolicy",
    "netpol": "networkpolicy",
    "svc": "service",
    "ns": "namespace",
    "cm": "configmap",
    "ep": "endpoints",
    "gtw": "gateway",
    "gc": "gatewayclass",
    "cert": "certificate",
    "certs": "certificate",
}


def _forms(kind: str) -> set[str]:
    k = kind.lower()
    forms = {k, k + "s", k + "es"}
    if k.endswith("y"):
        forms.add(k[:-1] + "ies")
    return forms


def resolve(name: str, present: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """(group, kind) that ``name`` means: a served kind, else one of ``present`` (the loaded
    objects' (group, kind))."""
    text, _, group = name.lower().partition(".")
    info = registry.resolve_kind_name(text)
    if info is not None and (not group or info.group == group or info.group.startswith(group + ".")):
        return info.group, info.kind
    text = SHORT_NAMES.get(text, text)
    matches = sorted({(g, k) for g, k in present
                      if text in _forms(k) and (not group or g.lower() == group or g.lower().startswith(group + "."))})
    return matches[0] if matches else None
