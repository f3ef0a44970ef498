"""A JetStream server with less storage than the dead-letter stream asks for
(APP_DLQ_MAX_BYTES, a gigabyte by default): the start stops with one line naming the setting,
not a traceback (the fault schedules' small disks met it first)."""

import pytest

from app.brokers.embedded import NatsServer

pytestmark = pytest.mark.slow


def test_a_server_without_room_for_the_dead_letter_stream_is_one_line_naming_the_setting(
    service_process, tmp_path
):
    server = NatsServer(tmp_path / "nats", config="jetstream { max_file_store: 64MB }")
    server.start()
    try:
        service = service_process({"APP_NATS_URL": server.url, "APP_DOMAIN": ""}, wait=None)
        assert service.proc is not None
        assert service.proc.wait(30) != 0
        log = service.log()
        (line,) = [line for line in log.splitlines() if "cannot start" in line]
        assert "APP_DLQ_MAX_BYTES=1073741824" in line
        assert "lower APP_DLQ_MAX_BYTES" in line
        assert "Traceback" not in log
    finally:
        server.stop()
