"""NATS publishes with headers, framed by qosmesh instead of nats-py.

nats-py checks and encodes headers in a Python loop on every publish (per header a regex match,
two strips, a translate and two encodes: about 1.5 µs each, more than a whole publish without
headers). An envelope's header names repeat from message to message, so each name is checked
once per process, the values are checked together with one search, and the HPUB frame is built
in one piece and queued on the client exactly as `Client.publish` queues its own.

Every publish is measured first as the server measures it, header block and payload together
(nats-py compares only the payload): a frame over `max_payload` makes the server close the
connection, so it is refused here with MessageTooLargeError and never sent.

Anything else out of the ordinary takes nats-py's own `publish`, with its checks and errors: a
client not connected (nats-py buffers or refuses), a header value with a line break (nats-py
replaces it), a name that is not a token (nats-py refuses it), or a nats-py without the
internals used here.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from app.errors import MessageTooLargeError

# The header-name token rule, and the subject rule of `Client.publish`, as nats-py applies them.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SUBJECT_BAD = re.compile(r"[ \t\r\n]")
_LINE_BREAK = re.compile(r"[\r\n]")
_KNOWN_LIMIT = 1024  # header names remembered as checked; past it, checked every time

log = logging.getLogger(__name__)

_INTERNALS = hasattr(NatsClient, "_send_command") and hasattr(NatsClient, "_flush_pending")
_checked_names: set[str] = set()


def _passes(value: str, checked: set[str], valid: Callable[[str], bool]) -> bool:
    """Whether `value` is `valid`, remembering (up to a limit) the ones that are."""
    if value in checked:
        return True
    if not valid(value):
        return False
    if len(checked) < _KNOWN_LIMIT:
        checked.add(value)
    return True


def is_token(name: str) -> bool:
    """Whether `name` may be a NATS header name."""
    return _TOKEN.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _subject(subject: str) -> bool:
    """Whether nats-py would take `subject`; the most recent 4,096 answers are remembered, so
    a service's own subjects are checked once, and a stream of new ones costs no memory."""
    return bool(subject) and not _SUBJECT_BAD.search(subject)


def header_block(headers: Mapping[str, str]) -> bytes | None:
    """`headers` as a NATS header block, or None when nats-py must handle them."""
    if not _checked_names.issuperset(headers) and not all(
        _passes(name, _checked_names, is_token) for name in headers
    ):
        return None
    if _LINE_BREAK.search("".join(headers.values())):
        return None
    if not headers:
        return b"NATS/1.0\r\n\r\n"
    lines = "\r\n".join(map(": ".join, headers.items()))
    return f"NATS/1.0\r\n{lines}\r\n\r\n".encode()


JETSTREAM_MAX_HEADERS = 64 * 1024
"""JetStream refuses to store a message whose header block is larger (err 10097)."""


def headers_size(headers: Mapping[str, str]) -> int:
    """The header block's length: exact for the blocks built here; an upper bound for those
    nats-py builds (it strips values)."""
    if not headers:
        return 0
    # "NATS/1.0\r\n", then "name: value\r\n" per header, then "\r\n".
    return 12 + sum(len(name.encode()) + len(value.encode()) + 4 for name, value in headers.items())


def frame_size(headers: Mapping[str, str], payload: bytes) -> int:
    """What the server counts against `max_payload`: the header block and the payload."""
    return headers_size(headers) + len(payload)


def check_size(
    nc: NatsClient, headers: Mapping[str, str], payload: bytes, max_headers: int = 0
) -> None:
    """Raise MessageTooLargeError when the server would refuse the frame (and close on us), or,
    with `max_headers`, when the header block is over it (a stream would not store it)."""
    size = frame_size(headers, payload)
    if size > nc.max_payload:
        raise MessageTooLargeError(
            f"{size} bytes of headers and body exceed the broker's limit of {nc.max_payload}"
        )
    if max_headers and (block := headers_size(headers)) > max_headers:
        raise MessageTooLargeError(
            f"{block} bytes of headers exceed the stream's limit of {max_headers}"
        )


async def publish(
    nc: NatsClient,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    reply: str = "",
    max_headers: int = 0,
) -> None:
    """`nc.publish(subject, payload, reply=reply, headers=headers)`, a few times faster; raises
    MessageTooLargeError, without sending, for a frame the server would refuse (`max_headers`:
    a limit of the header block's own, as JetStream has)."""
    block = header_block(headers) if _fast(nc, subject, reply, payload) else None
    if block is None:
        check_size(nc, headers, payload, max_headers)
        await nc.publish(subject, payload, reply=reply, headers=dict(headers))
        return
    if len(block) + len(payload) > nc.max_payload or (max_headers and len(block) > max_headers):
        check_size(nc, headers, payload, max_headers)
    head = f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    await nc._send_command(b"".join((head, block, payload, b"\r\n")))
    flush_queue = nc._flush_queue
    if flush_queue is not None and flush_queue.empty():
        await nc._flush_pending()


def _fast(nc: NatsClient, subject: str, reply: str, payload: bytes) -> bool:
    return (
        _INTERNALS
        and nc.is_connected
        and not nc.is_draining
        and len(payload) <= nc.max_payload
        and _subject(subject)
        and (not reply or _subject(reply))
    )


# -- replies without a queue -------------------------------------------------------------------


class _Direct:
    """Stands in for a subscription's pending queue: nats-py's read loop puts each message
    in, and it goes to `deliver` at once, with no queue and no switch to the subscription's
    task. For subscriptions whose handler only resolves a future: it must not block."""

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._deliver = deliver

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # nats-py added it, counting a backlog
        try:
            self._deliver(msg)
        except Exception:  # raised into nats-py's read loop, it would end the connection
            log.exception("delivering a message on %s failed", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None

    async def get(self) -> Msg:
        raise RuntimeError("nothing waits in a direct subscription")


def _subscription_internals(sub: Subscription) -> bool:
    return all(
        hasattr(sub, name) for name in ("_pending_queue", "_wait_for_msgs_task", "_pending_size")
    )


def deliver_directly(sub: Subscription, deliver: Callable[[Msg], None]) -> bool:
    """Hand `sub`'s messages to `deliver` as they are read, instead of queueing each for the
    subscription's task (about 12 µs a message); False, changing nothing, when nats-py's
    subscription no longer looks as this expects (its callback then gets them as before)."""
    if not _subscription_internals(sub):
        return False
    task = sub._wait_for_msgs_task
    if task is not None:
        task.cancel()
    sub._pending_queue = _Direct(sub, deliver)  # type: ignore[assignment]
    return True
