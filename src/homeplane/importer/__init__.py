"""Import a real home-ops repository: Flux Kustomizations, kustomize builds, Helm values.

:func:`homeplane.importer.repo.load_repo` turns a Flux tree (``kubernetes/flux/cluster/ks.yaml``
and the per-app ``ks.yaml`` files it reaches) into the same objects a cluster
would hold, with app-template HelmReleases rendered into their Services and
HTTPRoutes, and every problem reported with its file.
"""
