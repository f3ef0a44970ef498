"""Stream naming and idempotent stream set-up, shared by the JetStream transport and its
dead-letter store."""

from __future__ import annotations

import logging
import re

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

log = logging.getLogger(__name__)


def stream_name(subject: str) -> str:
    """The stream that holds `subject`: the subject in upper case, dots made underscores."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()


SHARED_FIELDS = ("num_replicas", "duplicate_window")
"""What every instance and service using a stream must agree on: never changed in passing."""


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config` (idempotent at every start).

    An existing stream whose replicas or duplicate window differ from `config` is left as it
    is and the difference logged: another service, or an older version of this one, may rely
    on them, and a rolling deploy must not flip them back and forth."""
    try:
        await js.add_stream(config)
        return
    except BadRequestError:
        pass
    current = (await js.stream_info(config.name or "")).config
    if current.allow_msg_schedules:
        # Cannot be turned off again: an instance without the server's schedules (the
        # fallback, an older version) keeps them, and the subjects they need, as they are.
        config.allow_msg_schedules = True
        config.subjects = [
            *(config.subjects or []),
            *(s for s in current.subjects or [] if s not in (config.subjects or [])),
        ]
    differences = [
        f"{name} {getattr(current, name)} (this instance wants {getattr(config, name)})"
        for name in SHARED_FIELDS
        if getattr(config, name) is not None and getattr(current, name) != getattr(config, name)
    ]
    if differences:
        log.warning(
            "stream %s is kept as it is: %s; change it deliberately, for every user at once",
            config.name,
            ", ".join(differences),
        )
        return
    await js.update_stream(config)
