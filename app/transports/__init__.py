"""The brokers behind one small Protocol (base.py): a package per broker (jetstream/, redis/) or a
module for the simple ones (nats_core.py, memory.py), each with its SPEC in the registry."""
