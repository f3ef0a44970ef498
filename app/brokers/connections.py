"""Connections to the brokers: NATS always, Redis when a QoS level uses it.

With no broker URL configured the embedded servers are started under APP_DATA_DIR. Clients
reconnect with backoff, so the service keeps serving while a broker is away; readiness reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from app.brokers.embedded import NatsServer, ServerProcess, StoreLock, ValkeyServer
from app.errors import BrokerUnavailableError
from app.settings import Settings

log = logging.getLogger(__name__)

ReconnectListener = Callable[[], Awaitable[None]]
RUNNING_URL = "running.url"


@dataclass(slots=True, eq=False)
class Brokers:
    """The live broker clients one instance shares between its components."""

    nc: NatsClient
    js: JetStreamContext
    redis: aioredis.Redis | None = None
    _reconnect_listeners: list[ReconnectListener] = field(default_factory=list)
    _closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_reconnect(self, listener: ReconnectListener) -> None:
        """Call `listener` after every NATS reconnect (watches and registrations need renewal)."""
        self._reconnect_listeners.append(listener)

    def close_with(self, close: Callable[[], Awaitable[None]]) -> None:
        """Call `close` when the brokers close, before their connections do (a client a
        transport made on the same server, say)."""
        self._closing.append(close)

    async def readiness(self) -> dict[str, str]:
        checks = {"nats": "ok" if self.nc.is_connected else "disconnected"}
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=1.0)
                checks["redis"] = "ok"
            except Exception:
                checks["redis"] = "disconnected"
        return checks


BROKER_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.Error,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""What a broker call raises when the broker is away or too slow: the caller may retry later."""


TOKEN_SCHEMES = ("nats", "tls", "ws", "wss")
"""Schemes whose user info without a colon is a token (NATS token auth), not a user name."""
SECRET_PARAMETERS = ("password", "passwd", "pwd", "secret", "token", "key", "auth")
"""A query parameter whose name contains one of these has its value hidden."""


def redact_url(url: str) -> str:
    """The URL fit for logs: the user name kept, a password or token never, and the value of
    every query parameter that names a secret hidden (`?password=`, `sslkey=`).

    Done on the text, not on a parse, so that a URL no parser accepts (a password with `/` or
    `#` in it) is hidden too: the user info is everything between `://` and the last `@`."""
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _secret = userinfo.partition(":")
        if colon:
            shown = f"{user}:***@"
        elif scheme.lower() in TOKEN_SCHEMES:
            shown = "***@"
        else:
            shown = f"{userinfo}@"
    else:
        shown, host = "", rest
    address, question, query = host.partition("?")
    if question:
        address += "?" + "&".join(_redact_parameter(part) for part in query.split("&"))
    return f"{scheme}{sep}{shown}{address}"


def redact_text(text: str, url: str) -> str:
    """`text` (a driver's message, which may echo `url`) with `url` shown as `redact_url`
    shows it and its password or token hidden wherever else it appears; the user name stays."""
    text = text.replace(url, redact_url(url))
    _scheme, _sep, rest = url.partition("://")
    userinfo, at, _host = rest.rpartition("@")
    if at:
        _user, colon, password = userinfo.partition(":")
        secret = password if colon else userinfo if _scheme.lower() in TOKEN_SCHEMES else ""
        if secret:
            text = text.replace(secret, "***")
    for part in url.partition("?")[2].split("&"):
        name, equals, value = part.partition("=")
        if equals and value and any(word in name.lower() for word in SECRET_PARAMETERS):
            text = text.replace(value, "***")
    return text


def _redact_parameter(part: str) -> str:
    name, equals, _value = part.partition("=")
    if equals and any(word in name.lower() for word in SECRET_PARAMETERS):
        return f"{name}=***"
    return part


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


def inbox_prefix(settings: Settings) -> str:
    """Where replies to this instance's requests arrive (APP_NATS_INBOX_PREFIX): the service's
    own prefix unless set, outside `_INBOX.>`, so its NATS user can be allowed those alone."""
    return settings.nats_inbox_prefix or f"_INBOX_{settings.service_name}"


def _nats_auth(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.nats_user:
        options["user"] = settings.nats_user
    if settings.nats_password:
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


async def connect_nats(
    servers: list[str], settings: Settings, listeners: list[ReconnectListener]
) -> NatsClient:
    """Connect, retrying until APP_NATS_CONNECT_TIMEOUT; afterwards nats-py reconnects forever
    and calls each of `listeners` after every reconnect. Refused credentials or an untrusted
    certificate fail at once: no retry can fix them."""
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
    attempts: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        if not nc.is_connected and not attempts_done.is_set():
            attempts.append(exc)
            if _is_refusal(exc) and not refused.done():
                refused.set_result(exc)
            return
        log.warning("nats error: %s", exc)

    async def disconnected_cb() -> None:
        if nc.is_closed:
            log.debug("nats disconnected: the connection is closed")  # at exit, or for good
            return
        log.warning("nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")
        for listener in list(listeners):
            try:
                await listener()
            except Exception:
                log.exception("reconnect listener failed")

    attempts_done = asyncio.Event()
    nc = NatsClient()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers=servers,
            name=settings.service_name,
            connect_timeout=2,
            reconnect_time_wait=settings.nats_reconnect_wait,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            ping_interval=10,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            inbox_prefix=inbox_prefix(settings),
            **_nats_auth(settings),
        )
    )
    first: set[asyncio.Future[Any]] = {connecting, refused}
    await asyncio.wait(
        first,
        timeout=settings.nats_connect_timeout,
        return_when=asyncio.FIRST_COMPLETED,
    )
    attempts_done.set()
    if connecting.done() and connecting.exception() is None:
        refused.cancel()
        return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()
    if refused.done():
        cause = f"refused: {refused.result()}"
    elif connecting.done() and not connecting.cancelled() and connecting.exception():
        cause = str(connecting.exception())
    else:
        last = f" (last error: {attempts[-1]})" if attempts else ""
        cause = f"no answer within {settings.nats_connect_timeout:g}s{last}"
    shown = ",".join(map(redact_url, servers))
    raise BrokerUnavailableError(f"cannot connect to NATS at {shown}: {cause}")


def _is_refusal(exc: Exception) -> bool:
    """Errors that no amount of retrying fixes: bad credentials or an untrusted certificate."""
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or "authorization" in text or "authentication" in text


async def connect_redis(url: str) -> aioredis.Redis:
    client = aioredis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        max_connections=256,
    )
    try:
        await asyncio.wait_for(client.ping(), timeout=5)
    except Exception as exc:
        await client.aclose()
        # Redis errors never echo the password; the URL is shown without its user info.
        raise BrokerUnavailableError(
            f"cannot connect to Redis at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from exc
    return client


@asynccontextmanager
async def open_brokers(
    settings: Settings, *, redis: bool, attach: bool = False
) -> AsyncIterator[Brokers]:
    """Start embedded servers where no URL is given, connect, and close everything on exit.

    `redis`: whether to connect to Redis too. The caller knows (the transport registry's
    `needs_redis`); the connections take no policy of their own.

    With `attach`, a tool (the `dlq` command) joins the embedded server of a running instance
    that uses the same APP_DATA_DIR instead of failing on its lock.
    """
    async with AsyncExitStack() as stack:
        servers = settings.nats_servers
        running = settings.data_path / "nats" / RUNNING_URL
        if not servers and attach and running.exists() and StoreLock.held(running.parent):
            servers = [running.read_text().strip()]
        if not servers:
            nats_store = settings.data_path / "nats"
            server = run_embedded(stack, NatsServer(nats_store, sync=settings.nats_sync))
            servers = [server.url]
            log.info("using embedded nats-server at %s", server.url)
        else:
            log.info("using NATS at %s", ",".join(map(redact_url, servers)))

        listeners: list[ReconnectListener] = []
        nc = await connect_nats(servers, settings, listeners)
        stack.push_async_callback(_close_nats, nc)
        js = nc.jetstream()
        brokers = Brokers(nc=nc, js=js, _reconnect_listeners=listeners)

        if redis:
            if settings.redis_url is None:
                valkey = run_embedded(stack, ValkeyServer(settings.data_path / "valkey"))
                redis_url = valkey.url
                log.info("using embedded valkey-server at %s", redis_url)
            else:
                redis_url = settings.redis_url.get_secret_value()
                log.info("using external Redis")
            brokers.redis = await connect_redis(redis_url)
            stack.push_async_callback(brokers.redis.aclose)
        stack.push_async_callback(_close_all, brokers._closing)
        yield brokers


_Server = TypeVar("_Server", bound=ServerProcess)


def run_embedded(
    stack: AsyncExitStack | ExitStack, server: _Server, timeout: float = 10.0
) -> _Server:
    """Start `server` on its store, locked against a second user, its URL in `running.url` (for
    the tools that attach to it); stopped, unlocked and the file removed when `stack` closes."""
    lock = StoreLock(server.store_dir)
    lock.acquire()
    stack.callback(lock.release)
    server.start(timeout)
    stack.callback(server.stop)
    running = server.store_dir / RUNNING_URL
    running.write_text(server.url)
    stack.callback(running.unlink, missing_ok=True)
    return server


async def _close_all(closing: list[Callable[[], Awaitable[None]]]) -> None:
    for close in reversed(closing):
        with contextlib.suppress(Exception):
            await close()


async def _close_nats(nc: NatsClient) -> None:
    # Components have stopped their own subscriptions by now; flush sends the last acks.
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    with contextlib.suppress(Exception):
        await nc.close()
