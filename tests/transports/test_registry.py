"""A transport is known by its descriptor alone: the settings, the router and the broker set-up
all ask the registry, never a list of names of their own."""

import os
import subprocess
import sys

import pytest

from app.bus import Bus
from app.errors import ConfigurationError, PublishError
from app.messages import Message
from app.qos.retries import RetryBudget, with_retries
from app.settings import Settings
from app.transports.base import Transport
from app.transports.jetstream.transport import JetStreamTransport
from app.transports.memory import MemoryTransport
from app.transports.nats_core import NatsCoreTransport
from app.transports.redis.transport import RedisStreamsTransport
from app.transports.registry import SPECS, needs_redis, register, spec_of
from app.transports.spec import TransportSpec
from tests.transports import throwaway


def test_each_descriptor_names_its_transport_class():
    classes: dict[str, type[Transport]] = {
        "memory": MemoryTransport,
        "nats": NatsCoreTransport,
        "jetstream": JetStreamTransport,
        "redis": RedisStreamsTransport,
    }
    for name, cls in classes.items():
        assert SPECS[name].name == cls.name == name


def test_only_transports_with_persistence_ack_and_retry_are_reliable():
    assert {name for name, spec in SPECS.items() if spec.reliable} >= {"jetstream", "redis"}
    assert not spec_of("nats").reliable


def test_an_unknown_transport_stops_the_start_naming_the_variable():
    settings = Settings.model_validate({"qos1_transport": "kafka"})
    with pytest.raises(ConfigurationError, match="APP_QOS1_TRANSPORT: unknown transport 'kafka'"):
        needs_redis(settings)  # the first thing the broker set-up asks


def test_a_registered_transport_is_accepted_everywhere_a_name_is():
    register(throwaway.SPEC)
    settings = Settings.model_validate({"qos1_transport": "throwaway"})
    assert settings.qos1_transport == "throwaway"
    assert not needs_redis(settings)
    with pytest.raises(ConfigurationError, match="registered already"):
        register(TransportSpec("throwaway", "x", True, False, throwaway.SPEC.build))


def test_redis_is_connected_only_for_a_transport_that_needs_it():
    assert needs_redis(Settings.model_validate({"qos1_transport": "redis"}))
    assert not needs_redis(Settings.model_validate({"qos1_transport": "jetstream"}))


def test_qos1_on_an_unreliable_transport_names_the_reliable_ones():
    class Tick(Message): ...

    bus = Bus(Settings.model_validate({"qos1_transport": "nats"}), {}, {}, "i1")
    with pytest.raises(ConfigurationError, match="jetstream") as refused:
        bus.route(Tick)
    assert "'nats'" in str(refused.value)


def test_the_service_refuses_an_unknown_transport_in_one_start_up_line(tmp_path):
    env = {**os.environ, "APP_QOS1_TRANSPORT": "kafka", "APP_DATA_DIR": str(tmp_path)}
    started = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2
    assert started.stderr.strip().splitlines() == [
        "configuration error: APP_QOS1_TRANSPORT: unknown transport 'kafka' "
        "(known: jetstream, memory, nats, redis)"
    ]


def _instance(error_type: type[BaseException]) -> BaseException:
    try:
        return error_type()
    except TypeError:
        return error_type("broker trouble")


@pytest.mark.parametrize("spec", [s for s in SPECS.values() if s.transient], ids=lambda s: s.name)
async def test_a_transports_transient_errors_end_as_publish_error_and_nothing_else_is_retried(
    spec: TransportSpec,
):
    """The boundary: whatever its client raises for "not now" leaves the transport as the
    app's PublishError (a 503 with Retry-After at the API) once the budget is spent; a bug
    (anything else) is not retried and not disguised."""
    budget = RetryBudget(attempts=2, attempt_timeout=0.01, deadline=1.0)
    for error_type in spec.transient:
        calls = 0

        async def send(attempt: int, timeout: float, error_type=error_type) -> None:
            nonlocal calls
            calls += 1
            raise _instance(error_type)

        with pytest.raises(PublishError):
            await with_retries(send, budget, spec.transient, spec.system, "message m1")
        assert calls == 2, error_type

    async def bug(attempt: int, timeout: float) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await with_retries(bug, budget, spec.transient, spec.system, "message m1")
