"""How an envelope is kept in a Redis stream entry: each header a field, the body in `$body`."""

from __future__ import annotations

from collections.abc import Mapping

from app.messages import Envelope

BODY = "$body"
"""The stream field holding the message body; every other field is an envelope header."""

Fields = Mapping[bytes, bytes]


def fields_of(envelope: Envelope) -> dict[str, str | bytes]:
    """The fields of the stream entry that keeps `envelope`."""
    return {**envelope.headers, BODY: envelope.body}


def envelope_from(fields: Fields, subject: str) -> Envelope:
    """The envelope kept in a stream entry's fields."""
    headers = {
        key.decode(errors="replace"): value.decode(errors="replace")
        for key, value in fields.items()
        if key != BODY.encode()
    }
    return Envelope(headers=headers, body=fields.get(BODY.encode(), b""), subject=subject)
