"""`python -m app nats-permissions [--format conf|json|helm]`: the NATS permissions this service
needs with its settings and domain (docs/security.md), printed without a broker: as the
`permissions` block of its user in a nats-server configuration (`conf`), as JSON, or as values
for the Helm chart's bundled cluster (`helm`, JSON that Helm reads as YAML)."""

from __future__ import annotations

import argparse
import json
import sys

from app.brokers.connections import inbox_prefix
from app.brokers.permissions import Permissions
from app.errors import ConfigurationError
from app.instance.declared import declared_bus
from app.instance.nats_permissions import channels, service_permissions
from app.main import load_domain
from app.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "nats-permissions",
        help="print the NATS permissions this service needs",
        description="The NATS permissions this service needs with its settings and domain,\n"
        "without a broker (docs/security.md).",
        epilog="examples:\n"
        "  python -m app nats-permissions\n"
        "  python -m app nats-permissions --format helm > permissions.json",
    )
    command.add_argument(
        "--format",
        choices=("conf", "json", "helm"),
        default="conf",
        help="conf: a permissions block for nats-server's configuration (the default); "
        "json; helm: values for the Helm chart's bundled cluster",
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        permissions = await derive(settings)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(render(settings, permissions, args.format))
    return 0


async def derive(settings: Settings) -> Permissions:
    bus = await declared_bus(settings, load_domain(settings.domain))
    return service_permissions(settings, channels(bus))


def render(settings: Settings, permissions: Permissions, form: str) -> str:
    user = settings.nats_user or settings.service_name
    if form == "json":
        return json.dumps(permissions.as_dict(), indent=2)
    if form == "helm":
        values = {
            "natsUsers": {"enabled": True, "user": user, "permissions": permissions.as_dict()}
        }
        return json.dumps(values, indent=2)
    header = (
        f"# NATS permissions of service {settings.service_name}, its inboxes under "
        f"{inbox_prefix(settings)}\n"
        "# (python -m app nats-permissions). Its user in nats-server's configuration:\n"
        f"#   authorization {{ users = [ {{ user: {json.dumps(user)}, password: ...,"
        " permissions { ... } } ] }"
    )
    return f"{header}\n{permissions.config_block()}"
