"""`python -m app dlq list|show|replay|discard`: the /admin/dlq endpoints from a shell, in the
console's words.

It talks to the brokers directly (no admin token): whoever can run it can reach them anyway.
It prints for a reader (a table, a record, a line per dead letter acted on); `--json` prints
what /admin/dlq answers, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from nats.js.errors import NotFoundError

from app.brokers import open_brokers
from app.cli.nodes import print_table
from app.errors import DeadLetterNotFoundError, NotReplayableError, QosMeshError
from app.qos.dead_letters import SCAN_LIMIT, DeadLetter, DeadLetterDetail, DeadLetters
from app.settings import Settings
from app.transports.registry import build_transports, needs_redis

COLUMNS = ("DLQ ID", "TYPE", "SUBJECT", "REASON", "ERROR TYPE", "DELIVERIES", "DEAD AT")
DEFAULT_LIMIT = 50
LIST_HINT = "python -m app dlq list shows the ids"
RECORD_HEADERS = "qm-dlq-"
"""The headers a dead-letter record adds to its message's: `show` prints them as fields."""

EXAMPLES = """\
examples:
  python -m app dlq list
  python -m app dlq show js-17
  python -m app dlq replay js-17 js-18
  python -m app dlq replay --all --type OrderPlaced
  python -m app dlq discard js-17"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay and discard dead letters",
        description="Dead letters: messages no handler could take, kept to look at and to\n"
        "send back once the cause is fixed. The console's Dead letters tab, from a\n"
        "shell.",
        epilog=EXAMPLES,
    )
    actions = dlq.add_subparsers(
        dest="action", required=True, metavar="{list,show,replay,discard}", help="what to do"
    )
    _add_list(actions)
    _add_show(actions)
    _add_replay(actions)
    _add_discard(actions)


def _add_list(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = actions.add_parser(
        "list",
        help="dead letters, newest first, as a table",
        description="Dead letters, newest first, a page at a time: a table, and the command\n"
        "for the next page when there is one.",
        epilog="examples:\n"
        "  python -m app dlq list --limit 20\n"
        "  python -m app dlq list --json   (the page as GET /admin/dlq answers it)",
    )
    listing.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N dead letters (default {DEFAULT_LIMIT})",
    )
    listing.add_argument("--cursor", help="where the next page starts, as the last page said")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")


def _add_show(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = actions.add_parser(
        "show",
        help="one dead letter with its error, headers and body",
        description="One dead letter: why it failed, its message's headers and its body.",
        epilog="examples:\n  python -m app dlq show js-17\n  python -m app dlq show js-17 --json",
    )
    show.add_argument("dlq_id", metavar="DLQ_ID", help="its id, as `dlq list` shows it")
    show.add_argument("--json", action="store_true", help="print it as JSON")


def _add_replay(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = actions.add_parser(
        "replay",
        help="send dead letters back through their normal path",
        description="Send each dead letter back to its subject, with its message id, and\n"
        "drop it from the dead letters (with --all, the oldest first). One that fails\n"
        "again is dead-lettered again, under a new id.",
        epilog="examples:\n"
        "  python -m app dlq replay js-17\n"
        "  python -m app dlq replay js-17 js-18 js-20\n"
        "  python -m app dlq replay --all --type OrderPlaced",
    )
    replay.add_argument("dlq_ids", nargs="*", metavar="DLQ_ID", help="the ones to replay")
    replay.add_argument(
        "--all", action="store_true", help=f"every dead letter (the newest {SCAN_LIMIT:,} read)"
    )
    replay.add_argument("--type", metavar="TYPE", help="with --all: only this message type")
    replay.add_argument("--subject", metavar="SUBJECT", help="with --all: only this subject")


def _add_discard(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "Drop dead letters for good: their messages are never handled."
    examples = (
        "examples:\n  python -m app dlq discard js-17\n  python -m app dlq discard js-17 js-18"
    )
    discard = actions.add_parser(
        "discard", help="drop dead letters for good", description=text, epilog=examples
    )
    # Its name before the console's, kept for scripts; with no help, it is not listed.
    former = actions.add_parser("delete", description=text, epilog=examples)
    for parser in (discard, former):
        parser.add_argument("dlq_ids", nargs="+", metavar="DLQ_ID", help="the ones to drop")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 1 or more")
    return int(text)


async def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    async with open_brokers(settings, redis=needs_redis(settings), attach=True) as brokers:
        transports = await build_transports(settings, brokers)
        stores = [t.dead_letters for t in transports.by_name.values() if t.dead_letters]
        dead = DeadLetters(stores)
        try:
            return await ACTIONS[args.action](dead, args, out)
        except NotFoundError:  # the dead-letter stream: no instance ever made it
            print(
                "no dead letters at this broker: no instance ran against it yet "
                "(python -m app starts one)",
                file=sys.stderr,
            )
            return 1
        except QosMeshError as exc:
            print(_failure(exc, getattr(args, "dlq_id", "")), file=sys.stderr)
            return 1


async def _list(dead: DeadLetters, args: argparse.Namespace, out: TextIO) -> int:
    page = await dead.list(args.limit, args.cursor)
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2), file=out)
        return 0
    if not page.items:
        print("no more dead letters" if args.cursor else "no dead letters", file=out)
        return 0
    print_table(COLUMNS, [_row(item) for item in page.items], out)
    shown = f"{len(page.items)} of {page.total}"
    print(f"{shown} dead letter{'s' if page.total != 1 else ''}, newest first", file=out)
    if page.next_cursor:
        limit = f" --limit {args.limit}" if args.limit != DEFAULT_LIMIT else ""
        print(f"next page: python -m app dlq list{limit} --cursor {page.next_cursor}", file=out)
    return 0


def _row(item: DeadLetter) -> tuple[object, ...]:
    # Its label: the message type, or for a message with none the subject it came on.
    kind = f"{item.label} (stub)" if item.stub else item.label
    return (
        item.dlq_id,
        kind,
        item.subject,
        item.reason,
        item.error_type,
        item.deliveries,
        _time(item.dead_at),
    )


def _time(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


async def _show(dead: DeadLetters, args: argparse.Namespace, out: TextIO) -> int:
    detail = await dead.get(args.dlq_id)
    if args.json:
        print(json.dumps(detail.model_dump(mode="json"), indent=2), file=out)
        return 0
    for line in _record(detail):
        print(line, file=out)
    return 0


def _record(detail: DeadLetterDetail) -> list[str]:
    """A dead letter as a reader goes through it: what it is, why it failed, what it held, and
    what can be done with it."""
    fields = [
        ("message id", detail.message_id or "(none)"),
        ("type", detail.type or "(none)"),
        ("subject", detail.subject),
        ("transport", detail.transport),
        ("reason", f"{detail.reason}, after {detail.deliveries} deliveries"),
        ("explanation", detail.explanation),
        ("error", detail.error),
        ("error type", detail.error_type),
        ("dead at", _time(detail.dead_at)),
        ("group", f"{detail.fingerprint} (its label, reason and error type)"),
    ]
    if detail.stub:
        fields.append(("stub", "too large to keep whole: the first KiB only, not replayable"))
    lines = [f"dead letter {detail.dlq_id}"]
    lines += [f"  {name:<11} {value}" for name, value in fields]
    headers = {k: v for k, v in detail.headers.items() if not k.startswith(RECORD_HEADERS)}
    lines += ["headers", *(f"  {name}: {value}" for name, value in sorted(headers.items()))]
    lines += ["body", *(f"  {line}" for line in _readable(detail.body).splitlines())]
    again = "" if detail.stub else f"python -m app dlq replay {detail.dlq_id} sends it again; "
    lines.append(f"{again}python -m app dlq discard {detail.dlq_id} drops it")
    return lines


def _readable(body: str) -> str:
    """A JSON body indented; any other as it is."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


async def _replay(dead: DeadLetters, args: argparse.Namespace, out: TextIO) -> int:
    if args.all == bool(args.dlq_ids) or (not args.all and (args.type or args.subject)):
        print(
            "dlq replay: name the dead letters' ids, or --all (with --type or --subject to "
            "choose among them): python -m app dlq replay --help shows examples",
            file=sys.stderr,
        )
        return 2
    ids = await _every(dead, args, out) if args.all else args.dlq_ids

    async def replay(dlq_id: str) -> str:
        message_id = await dead.replay(dlq_id)
        return f"replayed as message {message_id}" if message_id else "replayed"

    failed = await _each(ids, replay, out)
    if len(ids) > failed:
        which = "it" if len(ids) - failed == 1 else "one"
        print(f"if {which} fails again, python -m app dlq list shows it (under a new id)", file=out)
    return 1 if failed else 0


async def _every(dead: DeadLetters, args: argparse.Namespace, out: TextIO) -> list[str]:
    """The ids --all chooses, oldest first (replayed in the order they failed)."""
    items, complete = await dead.scan(SCAN_LIMIT)
    chosen = [
        item.dlq_id
        for item in reversed(items)
        if args.type in (None, item.type) and args.subject in (None, item.subject)
    ]
    if not complete:
        print(f"the newest {len(items)} read: run it again for the older ones", file=out)
    if not chosen:
        print("no dead letters to replay", file=out)
    return chosen


async def _discard(dead: DeadLetters, args: argparse.Namespace, out: TextIO) -> int:
    async def discard(dlq_id: str) -> str:
        await dead.delete(dlq_id)
        return "discarded"

    return 1 if await _each(args.dlq_ids, discard, out) else 0


async def _each(ids: Sequence[str], action: Callable[[str], Awaitable[str]], out: TextIO) -> int:
    """`action` on each id in turn, a line for each saying what it did; one that fails says
    why on stderr, and the rest go on. Returns how many failed."""
    failed = 0
    for dlq_id in ids:
        try:
            done = await action(dlq_id)
        except QosMeshError as exc:
            print(_failure(exc, dlq_id), file=sys.stderr)
            failed += 1
        else:
            print(f"{dlq_id}: {done}", file=out, flush=True)
    return failed


def _failure(exc: QosMeshError, dlq_id: str) -> str:
    """One line for what went wrong with `dlq_id`, and what to run next."""
    if isinstance(exc, DeadLetterNotFoundError):
        return f'no dead letter "{dlq_id}": {LIST_HINT}'
    if isinstance(exc, NotReplayableError):
        return f"{exc}: python -m app dlq discard {dlq_id} drops it"
    return f"{dlq_id}: {exc}" if dlq_id else f"error: {exc}"


ACTIONS: dict[str, Callable[[DeadLetters, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "discard": _discard,
    "delete": _discard,
}
