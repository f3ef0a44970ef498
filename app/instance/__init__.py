"""One running instance: what it holds (`services`), the broker-bound parts and the rebuilder
that rebuilds them (`runtime`), readiness, the drain on stop (`lifecycle`), the outbox relay's
wiring (`relay`), the NATS micro responders (`micro`) and the start banner (`banner`)."""
