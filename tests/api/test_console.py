"""The console's and the docs' pages over HTTP: their Content-Security-Policy, assets that are
all served from this origin, and the messaging summary read from the same instruments as
/metrics. (The pages in a real browser: tests/console.)"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from app.api.docs import BUNDLES, REDOC_FILES, SWAGGER_FILES
from app.observability.snapshot import MAX_AGE, SNAPSHOTS
from app.testing import running_app

POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
}


def policy(response: httpx.Response) -> dict[str, str]:
    header = response.headers["content-security-policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


@pytest.fixture
async def client(settings_for, nats_server):
    settings = settings_for(nats_url=nats_server.url, domain="")
    async with running_app(settings) as (app, url), httpx.AsyncClient(base_url=url) as client:
        yield app, client


@pytest.mark.parametrize("path", ["/console", "/docs"])
async def test_pages_allow_scripts_styles_and_requests_from_this_origin_only(client, path):
    _, http = client
    response = await http.get(path)
    assert response.status_code == 200
    assert POLICY.items() <= policy(response).items()
    assert response.headers["x-content-type-options"] == "nosniff"
    page = response.text
    assert "<script>" not in page  # no inline script: only <script src=...>
    assert "style=" not in page
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith("/"), url  # nothing from another origin


async def test_redoc_adds_a_fresh_nonce_for_the_styles_it_injects(client):
    _, http = client
    first, second = await http.get("/redoc"), await http.get("/redoc")
    nonces = []
    for response in (first, second):
        styles = policy(response)["style-src"]
        (nonce,) = re.findall(r"'nonce-([^']+)'", styles)
        assert f'data-nonce="{nonce}"' in response.text
        assert policy(response)["script-src"] == "'self'"
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


async def test_the_assets_the_pages_load_are_served(client):
    _, http = client
    pages = [(await http.get(path)).text for path in ("/console", "/docs", "/redoc")]
    urls = {url for page in pages for url in re.findall(r'(?:src|href)="(/[^"]+)"', page)}
    assert len(urls) >= 8
    for url in sorted(urls):
        response = await http.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 0


def test_the_packaged_bundles_are_where_the_docs_expect_them():
    """app/api/docs.py uses the fastapi-offline wheel's static folder: a release that moves or
    renames its files fails here (pyproject.toml bounds it below 2)."""
    for name in (*SWAGGER_FILES, *REDOC_FILES):
        assert (BUNDLES / name).stat().st_size > 100_000, name


async def test_the_messaging_summary_is_read_once_a_second_however_often_it_is_asked(client):
    """No token is needed to ask, so asking must be cheap: one snapshot of the instruments
    answers every request for a second (app/observability/snapshot.py)."""
    _, http = client
    before = SNAPSHOTS.taken
    started = time.monotonic()
    summaries = [(await http.get("/console/api/messaging")) for _ in range(300)]
    elapsed = time.monotonic() - started
    assert {response.status_code for response in summaries} == {200}
    assert summaries[-1].json()["qos"]["qos0_lost"] >= 0
    assert 0 <= summaries[-1].json()["age"] < MAX_AGE + 0.1  # the page's rates allow for it
    assert SNAPSHOTS.taken - before <= elapsed / MAX_AGE + 1
