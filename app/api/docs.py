"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from assets packaged with the service: no request
leaves the host, and both pages run under the console's Content-Security-Policy (FastAPI's own
pages load them from a CDN, with an inline script that policy refuses).

The Swagger UI and ReDoc bundles come from the fastapi-offline wheel's `static` folder; only the
files are used (tests/api/test_docs.py fails if they move), the pages and their start-up scripts
are ours.
"""

from __future__ import annotations

import html
import secrets
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.console import ASSETS, CSP, page_headers

ICON = '<link rel="icon" href="/console/static/icon.svg" type="image/svg+xml">\n'
BUNDLES = Path(fastapi_offline.__file__).parent / "static"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
REDOC_FILES = ("redoc.standalone.js",)

REDOC_LOAD_STYLES = (
    "sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=",  # perfect-scrollbar's stylesheet
    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # an empty <style>
)
"""What the ReDoc bundle injects as it loads, before it can be given the nonce: allowed by
hash. A new bundle with other styles fails tests/console/test_browser.py (a refused style is
a console error there)."""

router = APIRouter(include_in_schema=False)


def _page(title: str, head: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )


@router.get("/docs")
async def swagger_page() -> HTMLResponse:
    head = (
        '<link rel="stylesheet" href="/docs/static/swagger-ui.css">\n'
        '<link rel="stylesheet" href="/console/static/docs.css">\n'
        f"{ICON}"
    )
    body = (
        '<div id="swagger-ui" data-openapi="/openapi.json"></div>\n'
        '<script src="/docs/static/swagger-ui-bundle.js"></script>\n'
        '<script src="/console/static/swagger-init.js"></script>\n'
    )
    return HTMLResponse(_page("API · Swagger UI", head, body), headers=page_headers())


@router.get("/redoc")
async def redoc_page() -> HTMLResponse:
    """ReDoc injects its styles as <style> elements: they carry this response's nonce."""
    nonce = secrets.token_urlsafe(18)
    styles = " ".join(f"'{digest}'" for digest in REDOC_LOAD_STYLES)
    csp = CSP.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}' {styles}")
    csp += "; worker-src blob:"  # its search index runs in a worker it makes from a blob
    body = (
        f'<div id="redoc" data-openapi="/openapi.json" data-nonce="{nonce}"></div>\n'
        '<script src="/redoc/static/redoc.standalone.js"></script>\n'
        '<script src="/console/static/redoc-init.js"></script>\n'
    )
    return HTMLResponse(_page("API · ReDoc", ICON, body), headers=page_headers(csp))


def install(app: FastAPI) -> None:
    """Mount the bundles (a folder of the fastapi-offline wheel) and the console's assets."""
    missing = [f for f in (*SWAGGER_FILES, *REDOC_FILES) if not (BUNDLES / f).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline no longer ships {missing} in {BUNDLES}")
    app.mount("/docs/static", StaticFiles(directory=BUNDLES), name="docs-static")
    app.mount("/redoc/static", StaticFiles(directory=BUNDLES), name="redoc-static")
    app.mount("/console/static", StaticFiles(directory=ASSETS), name="console-static")
