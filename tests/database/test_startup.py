"""Starting against a database: one that is not up yet is waited for, one that refuses stops
the start at once with one line that names it and never shows the password."""

import time

import pytest

pytestmark = pytest.mark.slow

PASSWORD = "pw-never-in-logs-0123"


def test_an_instance_started_while_its_database_is_down_waits_for_it(
    service_process, nats_server, postgres_server
):
    postgres_server.kill()
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": postgres_server.url,
        "APP_DATABASE_MIGRATE": "true",
        "APP_DATABASE_CONNECT_TIMEOUT": "30",
    }
    service = service_process(env, wait=None)
    time.sleep(2)
    assert service.proc is not None
    assert service.proc.poll() is None, service.log()  # waiting for it, not exited
    postgres_server.start()
    service.wait_for("/readyz", timeout=30)
    assert "PostgreSQL did not answer" in service.log()


def test_a_database_that_refuses_stops_the_start_at_once_with_one_line(
    service_process, nats_server, postgres_server
):
    host = postgres_server.url.split("@", 1)[1].split("/", 1)[0]
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@{host}/no_such_db",
        "APP_DATABASE_CONNECT_TIMEOUT": "30",
    }
    service = service_process(env, wait=None)
    assert service.proc is not None
    assert service.proc.wait(20) != 0
    log = service.log()
    assert f"cannot connect to PostgreSQL at postgresql://postgres:***@{host}/no_such_db" in log
    assert "does not exist" in log  # the server's reason
    assert PASSWORD not in log
    (line,) = [line for line in log.splitlines() if "cannot connect to PostgreSQL" in line]
    assert "cannot start: cannot connect" in line
    assert "Traceback" not in log  # the line says it all
