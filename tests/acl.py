"""The ACL lines of docs/security.md, made into users of a private Redis 7.

The lines are templates whose only placeholders are the namespace (``fleettrace``
inside the braces), the user name (also inside the key patterns) and the password;
these helpers replace exactly those, so the users the tests make are the ones an
operator makes from the page. Never used on the shared server.
"""

from __future__ import annotations

import re
from pathlib import Path

import redis

from fleettrace.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
SECURITY_DOC = ROOT / "docs" / "security.md"
AGENT = "fleettrace-agent"
BUDGET_AGENT = "fleettrace-agent-budget"
WORKER = "fleettrace-worker"


def documented_acl_lines(doc: Path = SECURITY_DOC) -> dict[str, str]:
    """The ``ACL SETUSER`` lines of the security page (rules only), by user name."""
    lines = re.findall(r"^ACL SETUSER (\S+) (.+)$", doc.read_text(), flags=re.MULTILINE)
    return {user: rules for user, rules in lines}


def rules(template: str, keys: Keys, user: str, password: str, *, without: str = "") -> list[str]:
    """The rules of the documented line ``template`` for ``user`` in ``keys``' namespace."""
    line = documented_acl_lines()[template]
    line = line.replace(f":{template}:", f":{user}:").replace("{fleettrace}", keys.prefix)
    found = line.split()
    assert not without or without in found, f"{without} is not in the {template} line"
    return [f">{password}" if r.startswith(">") else r for r in found if r != without]


def create_user(
    admin: redis.Redis,
    template: str,
    keys: Keys,
    user: str,
    password: str,
    *,
    without: str = "",
) -> str:
    """Make ``user`` from the documented line and return its URL on ``admin``'s server."""
    admin.execute_command(
        "ACL", "SETUSER", user, *rules(template, keys, user, password, without=without)
    )
    kwargs = admin.connection_pool.connection_kwargs
    return f"redis://{user}:{password}@{kwargs['host']}:{kwargs['port']}/0"
