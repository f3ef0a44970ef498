"""qosmesh: a FastAPI microservice template with peer discovery and a QoS message router."""

__version__ = "0.1.0"
