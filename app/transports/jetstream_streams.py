"""Stream naming and idempotent stream set-up, shared by the JetStream transport and its
dead-letter store."""

from __future__ import annotations

import re

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError


def stream_name(subject: str) -> str:
    """The stream that holds `subject`: the subject in upper case, dots made underscores."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config` (idempotent at every start)."""
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
