"""homeplane: the networking stack of a home-ops cluster, served from its own manifests.

The pipeline (see DESIGN.md): manifests are loaded into a resource store
(:mod:`homeplane.api`), translated by a pure function into an immutable
:class:`~homeplane.translate.snapshot.Snapshot` plus status
(:mod:`homeplane.translate`), and the Snapshot is published to the data planes.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
