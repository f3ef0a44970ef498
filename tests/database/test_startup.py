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
    assert "is not reachable yet" in service.log()


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


def test_an_unknown_role_is_named_and_stops_the_start_at_once(
    service_process, nats_server, postgres_server
):
    """The user name is no secret: hiding it (`role "***" does not exist`) hid what to fix."""
    host = postgres_server.url.split("@", 1)[1].split("/", 1)[0]
    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": f"postgresql://nobody_here:{PASSWORD}@{host}/postgres",
        "APP_DATABASE_CONNECT_TIMEOUT": "30",
    }
    service = service_process(env, wait=None)
    assert service.proc is not None
    assert service.proc.wait(20) != 0
    log = service.log()
    (line,) = [line for line in log.splitlines() if "cannot connect to PostgreSQL" in line]
    assert 'role \\"nobody_here\\" does not exist' in line, line  # as the JSON log has it
    assert "check the user, password and database name in APP_DATABASE_URL" in line
    assert PASSWORD not in log


def test_an_unreachable_database_is_waited_for_with_one_line_then_a_few_then_the_last(
    service_process, nats_server
):
    """Nothing listens: one line says it is not reachable yet and how long the start waits,
    a few more at most every 5 s, and the last one says what to check."""
    from app.brokers.embedded import free_port

    env = {
        "APP_NATS_URL": nats_server.url,
        "APP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "APP_DATABASE_CONNECT_TIMEOUT": "8",
    }
    service = service_process(env, wait=None)
    assert service.proc is not None
    assert service.proc.wait(30) != 0
    log = service.log().splitlines()
    (first,) = [line for line in log if "is not reachable yet" in line]
    assert "waiting up to 8 s" in first
    assert len([line for line in log if "still waiting for PostgreSQL" in line]) <= 2
    (last,) = [line for line in log if "cannot connect to PostgreSQL" in line]
    assert "APP_DATABASE_URL names it" in last
    assert "Traceback" not in "\n".join(log)
