"""Benchmarks: the QoS router and discovery measured beside the raw nats-py and redis-py
clients doing the same work, in one run, reported as ratios (`python3 dev.py bench`)."""
