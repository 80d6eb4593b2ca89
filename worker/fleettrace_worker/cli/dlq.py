"""``fleettrace dlq``: look at dead letters, put them back once their cause is fixed,
or delete them once reviewed. Dead-letter streams are read in pages, never whole:
``list`` shows one page (``--cursor`` the next), ``list --jsonl`` streams them all.

Dead letters are kept per namespace (``keys.dead_letters``): every action works within
the one ``--namespace`` names (default the environment's), says which (in its lines and
a ``"namespace"`` key of its JSON), and can neither see nor touch another namespace's
letters."""

from __future__ import annotations

import argparse
import itertools
from datetime import UTC, datetime
from typing import Any, Final

import redis

from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.cli.durations import parse_duration
from fleettrace_worker.cli.render import Column, Kind
from fleettrace_worker.keys import GROUPS, PERSIST_GROUP
from fleettrace_worker.stream.deadletter import (
    DeadLetter,
    check_ids,
    delete_dead_letters,
    iter_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)

#: Dead letters per page of the table and of --json (--jsonl streams them all).
DEFAULT_LIMIT: Final = 100
LIST_COLUMNS: Final = (
    Column("id", "ID", Kind.ID),
    Column("made_at", "MADE", Kind.TIME),
    Column("reason", "REASON"),
    Column("record", "RECORD"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, replay or delete dead letters",
        description="Dead letters are records or entries a consumer group could not handle, "
        "kept with the reason.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        help="show dead letters with their reasons",
        description="Dead letters oldest first, one page at a time: the last line says how "
        "many the group holds and, when more follow, the --cursor of the next page. "
        "--json adds where each came from (stream, entry id, consumer, position).",
    )
    _common(listing)
    options.add_data_dir_option(listing)
    _reason(listing)
    render.add_output_options(listing, jsonl=True)
    listing.add_argument(
        "--limit",
        type=options.POSITIVE,
        metavar="N",
        help=f"dead letters per page (default {DEFAULT_LIMIT}; with --jsonl, all)",
    )
    listing.add_argument(
        "--cursor", metavar="ID", help="continue after this dead letter (a previous page's end)"
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
    render.add_json_option(replay)
    replay.set_defaults(handler=run_replay)

    delete = actions.add_parser(
        "delete", help="delete dead letters by id", description="Delete reviewed dead letters."
    )
    _common(delete)
    delete.add_argument("--id", nargs="+", required=True, metavar="ID", help="dead-letter ids")
    options.add_yes_option(delete)
    render.add_json_option(delete)
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
    render.add_json_option(purge)
    purge.set_defaults(handler=run_purge)


def _common(parser: argparse.ArgumentParser) -> None:
    options.add_redis_options(parser)
    options.add_shard_option(parser)
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


def _made_at(dead_id: str) -> str:
    """When a dead letter was made: the milliseconds of its stream id."""
    millis = int(dead_id.partition("-")[0])
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def _group(args: argparse.Namespace) -> str:
    """``group persist of namespace 'fleettrace'``: whose dead letters a line speaks of."""
    return f"group {args.group} of {options.describe_scope(options.keys(args).namespace)}"


def _scope(args: argparse.Namespace) -> dict[str, Any]:
    return {"group": args.group, "namespace": options.keys(args).namespace}


def _as_json(dead_id: str, letter: DeadLetter, namespace: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": dead_id,
        "namespace": namespace,
        "made_at": _made_at(dead_id),
        "reason": letter.reason,
        "stream": letter.stream,
        "entry_id": letter.entry_id,
        "consumer": letter.consumer,
        "batch_id": letter.batch_id,
        "kind": letter.kind,
        "position": letter.position,
        "record": None,
    }
    if letter.record is not None:
        data["record"] = letter.record.decode("utf-8", "backslashreplace")
    if letter.original is not None:
        data["fields"] = {
            k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
            for k, v in letter.original.items()
        }
    return data


def _total(client: redis.Redis, keys: Keys, group: str) -> int:
    with translate_redis_errors("reading dead letters"):
        return int(client.xlen(keys.dead_letters(group)))


def run_list(args: argparse.Namespace) -> int:
    """One page (memory bounded by --limit), or with --jsonl every dead letter printed
    as read: memory stays flat however long the stream."""
    if args.cursor is not None:
        check_ids([args.cursor])
    render.check_sort(args, LIST_COLUMNS)
    client, keys = options.redis_client(args), options.keys(args)
    letters = (
        _as_json(dead_id, letter, keys.namespace)
        for dead_id, letter in iter_dead_letters(
            client, keys, args.group, reason=args.reason, after_id=args.cursor
        )
    )
    if args.jsonl:
        render.write_jsonl(letters if args.limit is None else itertools.islice(letters, args.limit))
        return EXIT_OK
    limit = args.limit or DEFAULT_LIMIT
    page = list(itertools.islice(letters, limit + 1))
    more = len(page) > limit
    page = page[:limit]
    cursor = page[-1]["id"] if more else None
    matching = "" if args.reason is None else f" with a reason containing {args.reason!r}"
    render.emit(
        args,
        LIST_COLUMNS,
        page,
        next_cursor=cursor,
        footer=_list_footer(args, len(page), _total(client, keys, args.group), cursor),
        empty=f"no dead letters{matching} in {_group(args)}",
        context=_scope(args),
    )
    return EXIT_OK


def _list_footer(args: argparse.Namespace, shown: int, total: int, cursor: str | None) -> str:
    if args.reason is None and args.cursor is None:
        text = f"{render.footer(shown, total, 'dead letter')} in {_group(args)}"
    else:
        which = "" if args.reason is None else f" with a reason containing {args.reason!r}"
        text = (
            f"showing {render.count_of(shown, 'dead letter')}{which}"
            f"{', more follow' if cursor else ''}; {total:,} in {_group(args)}"
        )
    return text if cursor is None else f"{text}; more: add --cursor {cursor}"


def run_replay(args: argparse.Namespace) -> int:
    report = replay_dead_letters(
        options.redis_client(args),
        options.keys(args),
        args.group,
        None if args.all else args.id,
        reason=args.reason,
    )
    if args.json:
        render.write_object(
            {
                **_scope(args),
                "replayed": report.replayed,
                "kept": [{"id": dead_id, "reason": why} for dead_id, why in report.refused],
                "not_found": report.missing,
            }
        )
    else:
        for dead_id in report.missing:
            print(f"{dead_id}: no such dead letter")
        for dead_id, reason in report.refused:
            print(f"{dead_id}: kept, {reason}")
        print(
            f"replayed {render.count_of(len(report.replayed), 'dead letter')}; "
            f"kept {len(report.refused):,}; not found {len(report.missing):,} "
            f"({_group(args)})"
        )
    return EXIT_FAILURE if report.refused or report.missing else EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    check_ids(args.id)  # a typo is one line before any question
    client, keys = options.redis_client(args), options.keys(args)
    question = f"Delete {render.count_of(len(args.id), 'dead letter')} of {_group(args)} for good?"
    if not options.confirm(question, yes=args.yes):
        _say(args, "nothing deleted", {**_scope(args), "deleted": [], "not_found": []})
        return EXIT_FAILURE
    report = delete_dead_letters(client, keys, args.group, args.id)
    if not args.json:
        for dead_id in report.missing:
            print(f"{dead_id}: no such dead letter")
    _say(
        args,
        f"deleted {render.count_of(len(report.deleted), 'dead letter')}; "
        f"not found {len(report.missing):,} ({_group(args)})",
        {**_scope(args), "deleted": report.deleted, "not_found": report.missing},
    )
    return EXIT_FAILURE if report.missing else EXIT_OK


def run_purge(args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - parse_duration(args.older_than)
    client, keys = options.redis_client(args), options.keys(args)
    matching = "" if args.reason is None else f" with a reason containing {args.reason!r}"
    question = (
        f"Delete every dead letter{matching} of {_group(args)} made before "
        f"{before.isoformat(timespec='seconds')} for good?"
    )
    result: dict[str, Any] = {**_scope(args), "before": before.isoformat(), "purged": 0}
    if not options.confirm(question, yes=args.yes):
        _say(args, "nothing deleted", result)
        return EXIT_FAILURE
    result["purged"] = purge_dead_letters(
        client, keys, args.group, before=before, reason=args.reason
    )
    _say(
        args,
        f"purged {render.count_of(result['purged'], 'dead letter')}{matching} of {_group(args)}",
        result,
    )
    return EXIT_OK


def _say(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    """The result of a command: a line for people, one JSON object with --json."""
    if args.json:
        render.write_object(data)
    else:
        print(text)
