"""Reading Prometheus text in the tests (tests/unit/bot/test_metrics.py, test_health_routes.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, suffix: str = "") -> dict[tuple, float]:
    return {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples
            if sample.name == family.name + suffix}
