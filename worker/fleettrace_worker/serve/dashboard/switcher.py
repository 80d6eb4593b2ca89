"""The namespace switcher in every page's header: a GET form with the namespace being
read, which sends the browser to the same page in the namespace typed.

Redis keeps no list of namespaces (listing them would walk the whole keyspace on every
page), so the switcher is a text field; a name that is not a namespace is the page's
400, one Redis knows nothing of its 404, as for ``?namespace=`` in the URL. The page's
other query parameters go along as hidden fields (all but ``cursor``: a position in
one namespace's list means nothing in another's). A page of one plan or call, or a
replay's result, switches to its section's list instead (``/plans``, ``/dlq``): the same
id in another namespace is another plan or none.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from typing import Final

from starlette.requests import Request

from fleettrace.keys import Keys

#: Query parameters the switcher leaves behind.
DROPPED: Final = frozenset({"namespace", "cursor"})


def _e(value: str) -> str:
    return html.escape(value, quote=True)


def target(request: Request, pages: Collection[str]) -> tuple[str, list[tuple[str, str]]]:
    """Where the switcher sends the browser (``pages``: the paths whose query it keeps),
    and the query parameters it keeps."""
    path = request.url.path
    if request.method == "GET" and path in pages:
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in DROPPED]
        return path, kept
    if path.startswith(("/plans/", "/calls/")):
        return "/plans", []
    return ("/dlq" if path.startswith("/dlq") else "/"), []


def namespace_switcher(request: Request, keys: Keys, pages: Collection[str]) -> str:
    """The header's form: the namespace being read in a text field, the page's other
    parameters hidden, everything escaped (names and values come from the URL)."""
    action, kept = target(request, pages)
    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in kept)
    return (
        f'<form method="get" action="{_e(action)}" class="ns" id="namespace-switcher">'
        f'<label>namespace <input name="namespace" value="{_e(keys.namespace)}" '
        'size="16" maxlength="64" required></label>'
        f"{hidden}<button>Switch</button></form>"
    )
