"""The AsyncAPI document as a page for people (`GET /asyncapi`): every value of the document
escaped, no script, under the console's Content-Security-Policy (docs/console.md)."""

from __future__ import annotations

import html
import json
from string import Template
from typing import Any

from app.api.console import PAGES

PAGE = Template((PAGES / "asyncapi.html").read_text())
QOS_TEXT = {0: "at most once", 1: "at least once", 2: "effectively once"}


def page(doc: dict[str, Any]) -> str:
    """`doc` as HTML: every channel with its message, QoS, transport, what this service does
    with it, its headers and example, and its payload schema folded away. Every value of the
    document is escaped, as the console shows what it reads as text."""
    info, channels = doc["info"], doc["channels"]
    articles = [_channel(doc, key, channel) for key, channel in channels.items()]
    return PAGE.substitute(
        title=_text(info["title"]),
        version=_text(info["version"]),
        asyncapi=_text(doc["asyncapi"]),
        description=_text(info.get("description", "")),
        overview="".join(_overview_row(doc, key, channel) for key, channel in channels.items()),
        channels="".join(articles) or '<p class="status">This service declares no messages.</p>',
        headers=_header_rows(doc),
    )


def _channel(doc: dict[str, Any], key: str, channel: dict[str, Any]) -> str:
    message = _message(doc, channel)
    name, summary = message.get("name", key), message.get("summary", "")
    examples = message.get("examples") or [{}]
    if "payload" in examples[0]:
        shown = f'<pre class="example">{_json(examples[0]["payload"])}</pre>'
    else:
        shown = '<p class="status">No example: the one made from the schema did not validate.</p>'
    return (
        f'<article class="channel" id="{_anchor(key)}" data-channel="{_text(channel["address"])}">'
        f"\n<h2>{_code(channel['address'])} <small>{_text(name)}</small></h2>\n"
        + (f'<p class="summary">{_text(summary)}</p>\n' if summary not in ("", name) else "")
        + _facts(doc, key, channel, message)
        + f"<h3>Example payload</h3>\n{shown}\n"
        '<details class="schema"><summary>Payload schema (JSON Schema)</summary>\n'
        f"<pre>{_json(_schemas_of(doc, message.get('payload', {})))}</pre></details>\n"
        "</article>\n"
    )


def _facts(doc: dict[str, Any], key: str, channel: dict[str, Any], message: dict[str, Any]) -> str:
    """QoS, transport, what this service does, the headers of the example (else the required
    ones) and the schema version, as HTML."""
    example = (message.get("examples") or [{}])[0]
    headers = example.get("headers") or dict.fromkeys(_headers(doc).get("required", []), "…")
    facts = {
        "QoS": _text(f"{channel['x-qos']} · {QOS_TEXT.get(channel['x-qos'], '?')}"),
        "transport": _text(channel["x-transport"]),
        "this service": "; ".join(_roles(doc, key)) or "only declares it",
        "headers": " ".join(_code(f"{name}: {value}") for name, value in headers.items()),
        "schema version": _text(message.get("x-schema-version", 1)),
    }
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts.items())
    return f'<dl class="facts">{rows}</dl>\n'


def _overview_row(doc: dict[str, Any], key: str, channel: dict[str, Any]) -> str:
    actions = sorted({op["action"] for op in _operations(doc, key)}, reverse=True)
    cells = (
        f'<a href="#{_anchor(key)}">{_code(channel["address"])}</a>',
        _text(_message(doc, channel).get("name", key)),
        _text(channel["x-qos"]),
        _text(channel["x-transport"]),
        _text(", ".join(f"{action}s" for action in actions)),
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>\n"


def _roles(doc: dict[str, Any], key: str) -> list[str]:
    """What this service does on channel `key`, as HTML."""
    roles = []
    for operation in _operations(doc, key):
        if operation["action"] == "send":
            roles.append("sends")
            continue
        who = "one instance per message" if operation.get("x-competing") else "every instance"
        consumer = _code(operation.get("x-consumer", "?"))
        roles.append(f"receives through consumer {consumer} ({who})")
    return roles


def _header_rows(doc: dict[str, Any]) -> str:
    headers = _headers(doc)
    required = set(headers.get("required", []))
    return "".join(
        f"<tr><td>{_code(name)}</td><td>{'always' if name in required else 'when it applies'}"
        f"</td><td>{_text(field.get('description', ''))}</td></tr>\n"
        for name, field in headers.get("properties", {}).items()
    )


def _operations(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [
        operation
        for operation in doc["operations"].values()
        if operation["channel"].get("$ref") == f"#/channels/{key}"
    ]


def _message(doc: dict[str, Any], channel: dict[str, Any]) -> dict[str, Any]:
    """The channel's (first) message, its reference followed."""
    first: dict[str, Any] = next(iter(channel["messages"].values()), {})
    return _resolve(doc, first["$ref"]) if "$ref" in first else first


def _headers(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["components"]["schemas"].get("QosMeshHeaders", {}))


def _schemas_of(doc: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The component schemas `payload` refers to, and those they refer to, by name (the
    payload's own first); `payload` itself when it refers to none."""
    found: dict[str, Any] = {}
    todo: list[Any] = [payload]
    while todo:
        node = todo.pop(0)
        if isinstance(node, list):
            todo.extend(node)
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and ref.rsplit("/", 1)[-1] not in found:
            found[ref.rsplit("/", 1)[-1]] = target = _resolve(doc, ref)
            todo.append(target)
        todo.extend(value for name, value in node.items() if name != "$ref")
    return found or payload


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _anchor(key: str) -> str:
    return _text(f"channel-{key}")


def _code(value: object) -> str:
    return f"<code>{_text(value)}</code>"


def _json(value: object) -> str:
    return _text(json.dumps(value, indent=2, ensure_ascii=False))


def _text(value: object) -> str:
    return html.escape(str(value))
