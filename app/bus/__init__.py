"""The QoS router: a service publishes and subscribes by message type, and the bus routes each
type to its transport by QoS (`router`), wrapping every handler in the guarantee its QoS asks
for (docs/qos.md)."""

from app.bus.router import Bus

__all__ = ["Bus"]
