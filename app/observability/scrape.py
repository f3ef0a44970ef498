"""What `/metrics` shows right now, as samples code can read: the console's messaging summary
and the NATS micro STATS reply report the same numbers as the Prometheus scrape."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

# The series names both readers use, as the Prometheus exporter names the instruments.
PENDING = "qosmesh_consumer_pending"
CONSUMED = "messaging_client_consumed_messages_total"
PROCESS_SECONDS = "messaging_process_duration_seconds_sum"
REDELIVERIES = "qosmesh_redeliveries_total"
DEAD_LETTERS = "qosmesh_dead_letters_total"
DEDUPE_HITS = "qosmesh_dedupe_hits_total"
QOS0_LOST = "qosmesh_qos0_lost_total"
PUBLISH_RETRIES = "qosmesh_publish_retries_total"

Sample = tuple[str, dict[str, str], float]
"""(name, labels, value) of one series."""


def samples() -> list[Sample]:
    """Every sample `/metrics` would show now. Built from the scrape's text, so it costs what a
    scrape costs: for pages and replies that people and tools ask for, not per message."""
    text = generate_latest().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(found: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in found
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )
