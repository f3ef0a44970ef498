"""Everything qosmesh reports about itself, in one place (docs/observability.md).

- `instruments`: the metric instruments by their contract names, the in-process counters and
  histograms the hot paths record to, and the readers that report them;
- `snapshot`: what the instruments counted, read at most once a second, for the console and
  the NATS micro STATS reply;
- `spans`: the messaging spans and trace context across the hop;
- `setup`: the providers, exporters and instrumentation a service installs at start.
"""
