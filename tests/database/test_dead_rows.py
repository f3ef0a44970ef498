"""The outbox's dead rows as an operator meets them, over /admin/outbox and `python -m app
outbox`: listed with their reason, shown, retried (dead again while the cause stands, sent once
it is fixed) and discarded."""

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import httpx
from sqlalchemy import select

from app.database.connection import Database
from app.database.tables import outbox
from app.testing import eventually, running_app
from tests.database.conftest import bus_with_database, relay_for
from tests.database.test_outbox import relaying
from tests.transports.conftest import Ping

TOKEN = "admin-secret-0123456789"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "outbox", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def row_state(database: Database, message_id: str) -> tuple[bool, bool, int]:
    """(dead, sent, attempts) of the message's row."""
    async with database.engine.connect() as session:
        dead, sent, attempts = (
            await session.execute(
                select(
                    outbox.c.dead_at.isnot(None), outbox.c.sent_at.isnot(None), outbox.c.attempts
                ).where(outbox.c.message_id == message_id)
            )
        ).one()
    return bool(dead), bool(sent), int(attempts)


async def test_a_dead_row_is_listed_shown_retried_once_fixed_and_another_discarded(
    db_settings, database, postgres_server, tmp_path
):
    """Two rows delayed 8 days, written by an instance on the fallback scheduler, die at the
    relay of one on the server's schedules (which keep less). /admin lists and shows them; a
    retry there dies again (the cause stands), and a discard removes one. The operator then
    moves to the fallback scheduler and retries the other from the command line: it reaches the
    broker."""
    writer_settings = db_settings(scheduler="fallback")
    kept, dropped = Ping(n=1), Ping(n=2)
    async with (
        bus_with_database(writer_settings, database, instance="writer") as writer,
        database.transaction() as session,
    ):
        for message in (kept, dropped):
            await writer.bus.publish(message, session=session, delay=timedelta(days=8))

    native = db_settings(scheduler="native", admin_token=TOKEN, domain="")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        running_app(native) as (_, url),
        httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as client,
    ):

        async def both_dead() -> bool:
            return bool((await client.get("/admin/outbox/dead")).json()["total"] == 2)

        await eventually(both_dead, timeout=15, message="both rows dead")
        listed = (await client.get("/admin/outbox/dead")).json()["items"]
        assert [item["message_id"] for item in listed] == [kept.message_id, dropped.message_id]
        assert listed[0]["type"] == "Ping"
        assert listed[0]["error"].startswith("InvalidMessageError: a delay beyond")
        first = listed[0]["id"]
        shown = (await client.get(f"/admin/outbox/dead/{first}")).json()
        assert shown["headers"]["qm-deliver-at"]
        assert '"n":1' in shown["body"].replace(" ", "")

        retried = await client.post(f"/admin/outbox/dead/{first}/retry")
        assert retried.status_code == 202

        async def dead_again() -> bool:
            return await row_state(database, kept.message_id) == (True, False, 2)

        await eventually(dead_again, timeout=10, message="retried, and dead again")
        gone = await client.delete(f"/admin/outbox/dead/{listed[1]['id']}")
        assert gone.status_code == 204
        assert (await client.delete(f"/admin/outbox/dead/{listed[1]['id']}")).status_code == 404
        assert (await client.get("/admin/outbox/dead")).json()["total"] == 1
        assert (await httpx.AsyncClient(base_url=url).get("/admin/outbox/dead")).status_code == 401

    env = {
        "APP_DATABASE_URL": postgres_server.url,
        "APP_DATA_DIR": str(tmp_path / "cli"),
        "APP_DOMAIN": "",
    }
    listing = cli("dead", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "1 dead row(s)" in listing.stdout
    assert kept.message_id in listing.stdout
    assert "a delay beyond" in listing.stdout
    retried_cli = cli("retry", str(first), env=env)
    assert retried_cli.returncode == 0, retried_cli.stderr
    assert cli("retry", "999999", env=env).returncode == 1

    fallback = db_settings(scheduler="fallback")
    async with bus_with_database(fallback, database, instance="fixed") as running:
        async with relaying(relay_for(database, running.bus, fallback)):

            async def sent() -> bool:
                return await row_state(database, kept.message_id) == (False, True, 3)

            await eventually(sent, timeout=10, message="the retried row reached the broker")
        assert await running.bus.cancel(Ping, kept.message_id)  # waiting at the broker
    await asyncio.sleep(0)
