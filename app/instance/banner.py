"""The few lines an instance prints for a person once it is ready: who it is, what it runs on,
where to look, and how many peers it sees. On a terminal beside text logs; elsewhere (a file,
a pipe, JSON logs) the same facts as one `ready` log line."""

from __future__ import annotations

import sys
from typing import TextIO

from app.brokers import redact_url
from app.instance.runtime import Runtime
from app.instance.services import Services
from app.settings import Settings

BOLD, DIM, CYAN, RESET = "\x1b[1m", "\x1b[2m", "\x1b[36m", "\x1b[0m"


def wanted(settings: Settings, stream: TextIO = sys.stderr) -> bool:
    """A banner goes to a terminal, and only beside text logs."""
    return settings.log_format != "json" and stream.isatty()


def render(settings: Settings, services: Services, runtime: Runtime) -> str:
    rows = _rows(settings, services, runtime)
    me = runtime.discovery.self_info
    lines = [f"{BOLD}{me.service}{RESET} {me.version} {CYAN}ready{RESET}"]
    lines += [f"  {DIM}{name:<10}{RESET}{value}" for name, value in rows]
    return "\n".join(lines)


def one_line(settings: Settings, services: Services, runtime: Runtime) -> str:
    """The banner's facts as one log line."""
    rows = _rows(settings, services, runtime)
    return "ready: " + "; ".join(f"{name} {value}" for name, value in rows)


def _rows(settings: Settings, services: Services, runtime: Runtime) -> list[tuple[str, str]]:
    me = runtime.discovery.self_info
    nc = runtime.brokers.nc
    url = me.address.rstrip("/")
    version = nc.connected_server_version
    connected = nc.connected_url.geturl() if nc.connected_url is not None else ""
    where = "embedded" if not settings.nats_servers else "at " + redact_url(connected)
    broker = f"nats-server {version.major}.{version.minor}.{version.patch}, {where}"
    database = _database(settings, services)
    transports = (
        f"QoS 0 {settings.qos0_transport} · QoS 1 {settings.qos1_transport} · "
        f"QoS 2 {settings.qos2_transport}"
    )
    nodes = runtime.discovery.nodes()
    peers = sum(1 for n in nodes if n.service == me.service and n.node_id != me.node_id)
    others = sum(1 for n in nodes if n.service != me.service)
    seen = f"{peers} other instance{'s' if peers != 1 else ''} of {me.service}"
    if others:
        seen += f", {others} of other services"
    return [
        ("node", f"{me.node_id}  {url}"),
        ("broker", broker),
        ("messaging", transports),
        ("database", database),
        ("docs", f"{url}/docs"),
        ("console", f"{url}/console"),
        ("metrics", f"{url}/metrics"),
        ("events", f"{url}/nodes/events"),
        ("peers", seen),
    ]


def _database(settings: Settings, services: Services) -> str:
    if services.database is None:
        return "none"
    if settings.database_url is None:
        return "PostgreSQL, embedded"
    return f"PostgreSQL, at {redact_url(services.database.url)}"
