"""OpenTelemetry set-up: tracer and meter providers from the standard `OTEL_*` variables,
the FastAPI and httpx instrumentations, and the Prometheus text behind `GET /metrics`.

Traces go where `OTEL_TRACES_EXPORTER` says (`otlp`, `console` or `none`); with it unset they
are exported by OTLP when an OTLP endpoint is configured, else not at all. The OTLP protocol
follows `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`). Metrics are
always readable on `/metrics`, and also pushed by OTLP under the same rules
(`OTEL_METRICS_EXPORTER`).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

# The httpx instrumentation follows the stable HTTP conventions (`url.full`, as the server side
# does) only when asked, and reads this once: it must be set before it is imported.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

from fastapi import FastAPI, Response
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.observability.http import HttpTelemetry
from app.observability.instruments import LocalHistogramsReader, keep_histograms_locally
from app.settings import Settings

log = logging.getLogger(__name__)

UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# FastAPI's own telemetry (its `telemetry` option, in recent releases) turns itself on once an
# SDK provider is installed and would measure every request a second time, at about 80 µs a
# request; HttpTelemetry measures them. Releases without the option accept no such argument.
FASTAPI_OPTIONS: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def _enabled(signal: str) -> str:
    """The exporter chosen for `signal` ("traces" or "metrics"): otlp, console or none."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "none"
    chosen = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER")
    if chosen:
        return chosen.split(",")[0].strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return "otlp" if endpoint else "none"


def _protocol(signal: str) -> str:
    return os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )


def _span_exporter() -> SpanExporter | None:
    kind = _enabled("traces")
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        return None
    if _protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


class PrometheusReader(LocalHistogramsReader, PrometheusMetricReader):
    """The /metrics reader, with qosmesh's locally aggregated histograms."""


class PeriodicReader(LocalHistogramsReader, PeriodicExportingMetricReader):
    """The OTLP reader, with qosmesh's locally aggregated histograms."""


def _metric_readers() -> list[MetricReader]:
    readers: list[MetricReader] = [PrometheusReader()]
    if _enabled("metrics") == "otlp":
        if _protocol("metrics") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicReader(OTLPMetricExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )

            readers.append(PeriodicReader(HttpMetricExporter()))
    return readers


def setup_telemetry(settings: Settings, instance_id: str) -> None:
    """Install the global providers, once per process; a provider already installed (by a
    test harness or an embedding application) is left alone."""
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", settings.service_name),
            "service.version": __version__,
            "service.instance.id": instance_id,
        }
    )
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(resource=resource)
        exporter = _span_exporter()
        if exporter is not None:
            processor: SpanProcessor = BatchSpanProcessor(exporter)
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(
            MeterProvider(resource=resource, metric_readers=_metric_readers())
        )
        keep_histograms_locally()  # the readers just installed report them
    httpx_instrumentor = HTTPXClientInstrumentor()
    if not httpx_instrumentor.is_instrumented_by_opentelemetry:
        httpx_instrumentor.instrument()


def instrument_app(app: FastAPI) -> None:
    app.add_middleware(HttpTelemetry, untraced=UNTRACED_PATHS)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Every metric in Prometheus text format."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def shutdown_telemetry() -> None:
    """Flush what is buffered (spans in the batch processor, metrics in OTLP readers)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=3000)
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.force_flush(timeout_millis=3000)
