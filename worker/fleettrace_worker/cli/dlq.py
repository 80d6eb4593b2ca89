"""``fleettrace dlq``: look at dead letters, put them back once their cause is fixed,
or delete them once reviewed. Dead-letter streams are read in pages, never whole.

Dead letters are kept per namespace (``keys.dead_letters``): every action works within
the one ``--namespace`` names (default the environment's), says which, and can neither
see nor touch another namespace's letters."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from fleettrace.keys import GROUPS, PERSIST_GROUP
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options
from fleettrace_worker.deadletter import (
    DeadLetter,
    check_ids,
    delete_dead_letters,
    iter_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)
from fleettrace_worker.durations import parse_duration

_RECORD_CHARS = 120


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, replay or delete dead letters",
        description="Dead letters are records or entries a consumer group could not handle, "
        "kept with the reason, per namespace.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="show dead letters with their reasons")
    _common(listing)
    _reason(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "--limit", type=options.POSITIVE, metavar="N", help="show the oldest N only"
    )
    listing.set_defaults(handler=run_list)

    replay = actions.add_parser(
        "replay",
        help="put dead letters back on their stream",
        description="Put dead letters back on the stream they came from. A dead letter "
        "that the current code would still refuse stays where it is, with the reason.",
    )
    _common(replay)
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", nargs="+", metavar="ID", help="dead-letter ids to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    _reason(replay)
    replay.set_defaults(handler=run_replay)

    delete = actions.add_parser(
        "delete", help="delete dead letters by id", description="Delete reviewed dead letters."
    )
    _common(delete)
    delete.add_argument("--id", nargs="+", required=True, metavar="ID", help="dead-letter ids")
    options.add_yes_option(delete)
    delete.set_defaults(handler=run_delete)

    purge = actions.add_parser(
        "purge",
        help="delete dead letters older than a duration",
        description="Delete the dead letters made more than DURATION ago (30d, 12h, 90m), "
        "optionally only those whose reason contains --reason.",
    )
    _common(purge)
    purge.add_argument(
        "--older-than", required=True, metavar="DURATION", help="for example 30d or 12h"
    )
    _reason(purge)
    options.add_yes_option(purge)
    purge.set_defaults(handler=run_purge)


def _common(parser: argparse.ArgumentParser) -> None:
    options.add_redis_options(parser)
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default=PERSIST_GROUP,
        help=f"whose dead letters (default: {PERSIST_GROUP})",
    )


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", metavar="TEXT", help="only dead letters whose reason contains TEXT"
    )


def _as_json(dead_id: str, letter: DeadLetter, namespace: str) -> dict[str, object]:
    data: dict[str, object] = {
        "id": dead_id,
        "namespace": namespace,
        "reason": letter.reason,
        "stream": letter.stream,
        "entry_id": letter.entry_id,
        "consumer": letter.consumer,
        "batch_id": letter.batch_id,
        "kind": letter.kind,
        "position": letter.position,
    }
    if letter.record is not None:
        data["record"] = letter.record.decode("utf-8", "backslashreplace")
    if letter.original is not None:
        data["fields"] = {
            k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
            for k, v in letter.original.items()
        }
    return data


def _print_text(dead_id: str, letter: DeadLetter) -> None:
    where = f"{letter.stream} {letter.entry_id}"
    if letter.position is not None:
        where += f" record {letter.position}"
    print(f"{dead_id}  {where}  (seen by {letter.consumer})")
    print(f"    reason: {letter.reason}")
    if letter.record is not None:
        shown = letter.record[:_RECORD_CHARS].decode("utf-8", "backslashreplace")
        print(f"    record: {shown}{'...' if len(letter.record) > _RECORD_CHARS else ''}")


def run_list(args: argparse.Namespace) -> int:
    """Printed page by page as read: memory stays flat however long the stream."""
    shown = 0
    keys = options.keys(args)
    letters = iter_dead_letters(options.redis_client(args), keys, args.group, reason=args.reason)
    for dead_id, letter in letters:
        if args.limit is not None and shown >= args.limit:
            break
        shown += 1
        if args.json:
            print(json.dumps(_as_json(dead_id, letter, keys.namespace)))
        else:
            _print_text(dead_id, letter)
    if args.json:
        return EXIT_OK
    matching = "" if args.reason is None else f" with a reason containing {args.reason!r}"
    where = f"in group {args.group} of {options.describe_scope(keys.namespace)}"
    if not shown:
        print(f"no dead letters{matching} {where}")
    else:
        print(f"{shown} dead letter(s){matching} {where}")
    return EXIT_OK


def run_replay(args: argparse.Namespace) -> int:
    keys = options.keys(args)
    report = replay_dead_letters(
        options.redis_client(args),
        keys,
        args.group,
        None if args.all else args.id,
        reason=args.reason,
    )
    for dead_id in report.missing:
        print(f"{dead_id}: no such dead letter")
    for dead_id, reason in report.refused:
        print(f"{dead_id}: kept, {reason}")
    print(
        f"replayed {len(report.replayed)} dead letter(s); "
        f"kept {len(report.refused)}; not found {len(report.missing)} "
        f"(group {args.group} of {options.describe_scope(keys.namespace)})"
    )
    return EXIT_FAILURE if report.refused or report.missing else EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    check_ids(args.id)  # a typo is one line before any question
    client, keys = options.redis_client(args), options.keys(args)
    question = (
        f"Delete {len(args.id)} dead letter(s) of group {args.group} of "
        f"{options.describe_scope(keys.namespace)} for good?"
    )
    if not options.confirm(question, yes=args.yes):
        print("nothing deleted")
        return EXIT_FAILURE
    report = delete_dead_letters(client, keys, args.group, args.id)
    for dead_id in report.missing:
        print(f"{dead_id}: no such dead letter")
    print(
        f"deleted {len(report.deleted)} dead letter(s); not found {len(report.missing)} "
        f"(group {args.group} of {options.describe_scope(keys.namespace)})"
    )
    return EXIT_FAILURE if report.missing else EXIT_OK


def run_purge(args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - parse_duration(args.older_than)
    client, keys = options.redis_client(args), options.keys(args)
    matching = "" if args.reason is None else f" with a reason containing {args.reason!r}"
    question = (
        f"Delete every dead letter{matching} of group {args.group} of "
        f"{options.describe_scope(keys.namespace)} made before "
        f"{before.isoformat(timespec='seconds')} for good?"
    )
    if not options.confirm(question, yes=args.yes):
        print("nothing deleted")
        return EXIT_FAILURE
    deleted = purge_dead_letters(client, keys, args.group, before=before, reason=args.reason)
    print(
        f"purged {deleted} dead letter(s){matching} of group {args.group} of "
        f"{options.describe_scope(keys.namespace)}"
    )
    return EXIT_OK
