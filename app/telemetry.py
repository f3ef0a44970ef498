"""The metric instruments qosmesh records, by their contract names (docs/metrics.md).

Instruments come from the OpenTelemetry API's global meter provider, so recording costs nothing
until the SDK is configured, and every component records to the same names.
"""

from __future__ import annotations

from opentelemetry import metrics

meter = metrics.get_meter("qosmesh")

sent_messages = meter.create_counter(
    "messaging.client.sent.messages",
    unit="{message}",
    description="Messages published, by outcome (ok, error, lost)",
)
consumed_messages = meter.create_counter(
    "messaging.client.consumed.messages",
    unit="{message}",
    description="Deliveries handled, by outcome (ack, nak, term, duplicate)",
)
process_duration = meter.create_histogram(
    "messaging.process.duration", unit="s", description="Handler time per delivery"
)
qos0_lost = meter.create_counter(
    "qosmesh.qos0.lost", unit="{message}", description="QoS 0 publishes dropped"
)
publish_retries = meter.create_counter(
    "qosmesh.publish.retries", unit="{attempt}", description="Extra QoS 1+ publish attempts"
)
redeliveries = meter.create_counter(
    "qosmesh.redeliveries", unit="{message}", description="Deliveries with a count above 1"
)
dedupe_hits = meter.create_counter(
    "qosmesh.dedupe.hits", unit="{message}", description="QoS 2 duplicates stopped, by side"
)
dead_letters = meter.create_counter(
    "qosmesh.dead_letters", unit="{message}", description="Messages dead-lettered, by reason"
)
discovery_events = meter.create_counter(
    "qosmesh.discovery.events",
    unit="{event}",
    description="Membership changes seen, by type (joined, updated, left) and reason",
)
