"""The brokers as this instance reaches them: the connections (`connections`), the servers it can
embed (`embedded`), and the NATS plumbing every transport and store shares: the wire fast paths
(`nats_wire`), requests answered on one reply subscription (`replies`), the KV helpers (`kv`) and
the per-request deadlines (`deadlines`). Nothing here knows a transport or a QoS level."""

from app.brokers.connections import (
    BROKER_ERRORS,
    RUNNING_URL,
    Brokers,
    open_brokers,
    redact_text,
    redact_url,
    run_embedded,
)

__all__ = [
    "BROKER_ERRORS",
    "RUNNING_URL",
    "Brokers",
    "open_brokers",
    "redact_text",
    "redact_url",
    "run_embedded",
]
