"""The service for the HTTP rows, in its own process: `python -m bench.serve PORT on|off`.

on: an SDK TracerProvider with a BatchSpanProcessor exporting to a no-op exporter.
off: the API's no-op provider, so the app installs none and every span is a no-op.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from app.main import create_app
from app.settings import Settings


class DropExporter(SpanExporter):
    """Takes every batch and throws it away: the cost of recording, none of shipping."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def main(argv: list[str]) -> int:
    port, mode = int(argv[0]), argv[1]
    if mode == "on":
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        trace.set_tracer_provider(provider)
    else:
        trace.set_tracer_provider(NoOpTracerProvider())
    settings = Settings(port=port, log_level="WARNING")
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
