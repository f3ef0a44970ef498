"""Two real service processes, a real nats-server and an OTLP receiver: one trace across the
messaging hop, exact metric values after a known workload, and every dashboard metric present."""

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.example.messages import OrderPlaced, PaymentCaptured
from app.messages import encode
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[2] / "helm/qosmesh/dashboards/qosmesh.json"
PRODUCER, CONSUMER = 4, 5  # OTLP SpanKind values


@pytest.fixture
def receiver():
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def pair(service_process, nats_server, postgres_server, receiver):
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": postgres_server.url,
        "APP_DATABASE_MIGRATE": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }
    first = service_process(env, wait="/readyz")
    second = service_process(env, wait="/readyz")
    yield first, second
    # Stop while the broker and the receiver still run, so shutdown is the ordinary one.
    first.stop()
    second.stop()


def node_id(service) -> str:
    return str(httpx.get(service.url + "/nodes").json()["self"])


def wait_until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail("condition not reached")


def print_tree(spans: list[ReceivedSpan], names: dict[str, str]) -> None:
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_id, []).append(span)
    ids = {span.span_id for span in spans}

    def show(span: ReceivedSpan, depth: int) -> None:
        print(f"{'  ' * depth}{span.name}  [{names.get(span.instance, span.instance)}]")
        for child in children.get(span.span_id, []):
            show(child, depth + 1)

    print(f"\ntrace {spans[0].trace_id}")
    for root in (s for s in spans if s.parent_id not in ids):
        show(root, 1)


def test_one_trace_follows_an_order_from_http_to_the_handler_on_the_other_instance(pair, receiver):
    first, second = pair
    a, b = node_id(first), node_id(second)
    with httpx.Client(base_url=first.url) as client:
        for n in range(12):
            assert client.post("/orders", json={"sku": f"s{n}", "quantity": 1}).status_code == 202

    def crossing_trace() -> list[ReceivedSpan] | None:
        spans = receiver.snapshot()
        for process in spans:
            if process.kind == CONSUMER and process.instance == b:
                trace = [s for s in spans if s.trace_id == process.trace_id]
                names = {s.name for s in trace}
                # Each process exports its spans on its own schedule: wait for all four.
                wanted = {"db update orders", "POST /orders", "send qosmesh.order_placed"}
                if wanted <= names:
                    return trace
        return None

    trace = wait_until(crossing_trace)
    print_tree(trace, {a: "instance A", b: "instance B"})
    by_name = {span.name: span for span in trace}
    server = by_name["POST /orders"]
    send = by_name["send qosmesh.order_placed"]
    process = by_name["process qosmesh.order_placed"]
    db = by_name["db update orders"]
    assert server.instance == a
    assert server.parent_id not in {span.span_id for span in trace}  # the server side's root
    # Published by whichever instance's outbox relay took the row, in the request's trace.
    assert send.kind == PRODUCER
    assert send.parent_id == server.span_id
    assert process.kind == CONSUMER
    assert process.instance == db.instance == b
    assert process.parent_id == send.span_id
    assert db.parent_id == process.span_id
    assert process.attributes["messaging.system"] == "nats"
    assert process.attributes["messaging.destination.name"] == "qosmesh.order_placed"


def scrape(service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    values = {}
    for family in text_string_to_metric_families(httpx.get(service.url + "/metrics").text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel"))
            values[(sample.name, labels)] = sample.value
    return values


def total(scrapes, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return float(
        sum(
            value
            for scraped in scrapes
            for (sample, sample_labels), value in scraped.items()
            if sample == name and wanted <= sample_labels
        )
    )


async def publish_ten_times(url: str, envelope) -> None:
    nc = await nats.connect(url)
    for n in range(10):
        headers = {**envelope.headers, "Nats-Msg-Id": f"resend-{n}"}
        await nc.jetstream().publish(envelope.subject, envelope.body, headers=headers)
    await nc.close()


def test_metrics_after_a_known_workload_are_exact(pair, nats_server):
    """One order, then one payment message delivered ten times under fresh broker dedupe ids:
    it is applied once and stopped nine times by the receiver's inbox."""
    first, second = pair
    order = httpx.post(first.url + "/orders", json={"sku": "m", "quantity": 1}).json()
    payment = PaymentCaptured(order_id=order["order_id"], payment_id="pay-m", amount=3)
    envelope = encode(payment, payment.qos, "qosmesh.payment_captured")
    asyncio.run(publish_ten_times(nats_server.url, envelope))

    payments = "qosmesh.payment_captured"
    orders = "qosmesh.order_placed"
    name = "messaging_client_consumed_messages_total"

    def settled():
        scrapes = [scrape(first), scrape(second)]
        dest = {"messaging_destination_name": payments}
        done = total(scrapes, name, outcome="ack", **dest)
        done += total(scrapes, name, outcome="duplicate", **dest)
        # The order's own event, relayed from the outbox, may come after the payments.
        ordered = total(scrapes, name, outcome="ack", messaging_destination_name=orders)
        return scrapes if done >= 10 and ordered >= 1 else None

    scrapes = wait_until(settled)
    dest = {"messaging_destination_name": payments}
    assert total(scrapes, name, outcome="ack", **dest) == 1
    assert total(scrapes, name, outcome="duplicate", **dest) == 9
    assert total(scrapes, "qosmesh_dedupe_hits_total", side="inbox") == 9
    handled = total(scrapes, name, **dest)  # every outcome
    assert total(scrapes, "messaging_process_duration_seconds_count", **dest) == handled
    assert total(scrapes, "messaging_process_duration_seconds_bucket", le="+Inf", **dest) == handled
    assert total(scrapes, "qosmesh_dedupe_hits_total", side="publisher") == 0
    assert (
        total(
            scrapes,
            "messaging_client_sent_messages_total",
            messaging_destination_name="qosmesh.order_placed",
            outcome="ok",
        )
        == 1
    )
    assert (
        total(
            scrapes,
            "messaging_client_consumed_messages_total",
            messaging_destination_name="qosmesh.order_placed",
            outcome="ack",
        )
        == 1
    )
    assert total(scrapes, "qosmesh_dead_letters_total") == 0
    assert total(scrapes, "qosmesh_qos0_lost_total") == 0
    timeouts = "qosmesh_handler_timeouts_total"  # on record from the start, at zero
    assert any(sample == timeouts for scraped in scrapes for sample, _ in scraped)
    assert total(scrapes, timeouts) == 0
    assert total(scrapes, "qosmesh_discovery_nodes", service="qosmesh") == 4  # 2 views x 2
    paid = httpx.get(f"{first.url}/orders/{order['order_id']}").json()["paid"]
    assert paid == 3
    assert OrderPlaced.qos == 1


def dashboard_metrics() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    assert exprs
    names = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
        names |= set(re.findall(r"\b((?:qosmesh|messaging|http_server)_[a-z0-9_]+)\b", expr))
    return names


def test_every_dashboard_metric_is_exported(pair):
    """After a workload, each metric the dashboard queries is on some instance's /metrics."""
    first, second = pair
    httpx.post(first.url + "/orders", json={"sku": "d", "quantity": 1})
    wanted = dashboard_metrics()
    assert len(wanted) >= 12
    names: set[str] = set()

    def exported() -> bool:
        names.update(sample for scraped in (scrape(first), scrape(second)) for sample, _ in scraped)
        return wanted <= names

    try:
        wait_until(exported, timeout=10)
    finally:
        print("missing from /metrics:", sorted(wanted - names))
