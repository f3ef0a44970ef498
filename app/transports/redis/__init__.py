"""QoS 1 and 2 on Redis Streams (docs/redis.md): `codec` (an envelope as a stream entry),
`transport` (pipelined publishes), `consumer` (consumer groups, retries, claims of a dead
member's entries), `dead_letters` (the `dlq.<service>` stream) and `claims` (QoS 2 claims as
keys)."""
