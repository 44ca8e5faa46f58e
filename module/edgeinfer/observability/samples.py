"""The module's metrics read back from its registry: one collection, then lookups.

Both summaries of the module's figures read them so: the retained health topic
(:mod:`edgeinfer.observability.health`) and the status page's
(:mod:`edgeinfer.observability.status`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

Flat = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read_registry(registry: CollectorRegistry) -> Flat:
    """Every sample of ``registry`` by (name, sorted labels): one collection, not one per read."""
    flat: Flat = {}
    for family in registry.collect():
        for sample in family.samples:
            flat[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return flat


def value(flat: Flat, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when it is not there yet)."""
    return flat.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(flat: Flat, name: str, label: str) -> dict[str, float]:
    """The samples ``name`` by their value of ``label``."""
    return {
        dict(labels)[label]: count
        for (sample, labels), count in flat.items()
        if sample == name and label in dict(labels)
    }


def buckets(flat: Flat, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets as (upper bound, count), in order."""
    found = [(float(bound), count) for bound, count in by_label(flat, name, "le").items()]
    return sorted(found)
