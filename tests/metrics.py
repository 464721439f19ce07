"""What tests read of /metrics: the Prometheus text, parsed into samples."""

from __future__ import annotations

from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

# (sample name, its labels sorted) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape() -> Samples:
    """GET /metrics of this process (Django's test client), parsed."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    return parse_samples(response.content.decode())


def unlabelled(samples: Samples) -> dict[str, float]:
    """The samples without labels, by name (single-process mode has no pid label)."""
    return {name: value for (name, labels), value in samples.items() if not labels}
