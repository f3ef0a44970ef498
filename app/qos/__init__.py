"""What the QoS promises are made of, shared by the bus, the transports and the API: the QoS 2
claim stores' contract (`claims`), dead letters (`dead_letters`), and trying again within a
budget (`retries`). None of it knows a broker or HTTP (docs/qos.md)."""
