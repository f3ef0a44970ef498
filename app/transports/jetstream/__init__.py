"""QoS 1 and 2 on NATS JetStream: `transport` (publish with PubAcks, the pull consumers, the ack
inbox), `streams` (one stream per subject), `dead_letters` (the `<SERVICE>_DLQ` stream) and
`claims` (QoS 2 claims in a KV bucket)."""

SYSTEM = "nats"
"""The messaging system, as metrics and spans name it."""
