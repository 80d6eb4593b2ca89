"""``fleettrace dlq``: look at dead letters, and put them back once their cause is fixed."""

from __future__ import annotations

import argparse
import json

from fleettrace.keys import GROUPS, PERSIST_GROUP
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options
from fleettrace_worker.deadletter import DeadLetter, list_dead_letters, replay_dead_letters

_RECORD_CHARS = 120


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list or replay dead letters",
        description="Dead letters are records or entries a consumer group could not handle, "
        "kept with the reason.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="show dead letters with their reasons")
    _common(listing)
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
    replay.set_defaults(handler=run_replay)


def _common(parser: argparse.ArgumentParser) -> None:
    options.add_redis_options(parser)
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default=PERSIST_GROUP,
        help=f"whose dead letters (default: {PERSIST_GROUP})",
    )


def _as_json(dead_id: str, letter: DeadLetter) -> dict[str, object]:
    data: dict[str, object] = {
        "id": dead_id,
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


def run_list(args: argparse.Namespace) -> int:
    letters = list_dead_letters(
        options.redis_client(args), options.keys(args), args.group, count=args.limit
    )
    if args.json:
        for dead_id, letter in letters:
            print(json.dumps(_as_json(dead_id, letter)))
        return EXIT_OK
    if not letters:
        print(f"no dead letters in group {args.group}")
        return EXIT_OK
    for dead_id, letter in letters:
        where = f"{letter.stream} {letter.entry_id}"
        if letter.position is not None:
            where += f" record {letter.position}"
        print(f"{dead_id}  {where}  (seen by {letter.consumer})")
        print(f"    reason: {letter.reason}")
        if letter.record is not None:
            shown = letter.record[:_RECORD_CHARS].decode("utf-8", "backslashreplace")
            print(f"    record: {shown}{'...' if len(letter.record) > _RECORD_CHARS else ''}")
    print(f"{len(letters)} dead letter(s) in group {args.group}")
    return EXIT_OK


def run_replay(args: argparse.Namespace) -> int:
    report = replay_dead_letters(
        options.redis_client(args),
        options.keys(args),
        args.group,
        None if args.all else args.id,
    )
    for dead_id in report.missing:
        print(f"{dead_id}: no such dead letter")
    for dead_id, reason in report.refused:
        print(f"{dead_id}: kept, {reason}")
    print(
        f"replayed {len(report.replayed)} dead letter(s); "
        f"kept {len(report.refused)}; not found {len(report.missing)}"
    )
    return EXIT_FAILURE if report.refused or report.missing else EXIT_OK
