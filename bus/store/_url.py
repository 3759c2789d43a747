"""How a database URL may be shown (errors, logs, `status`, `db upgrade`): never its password.

SQLAlchemy's `render_as_string(hide_password=True)` masks the password of the user part only;
libpq also takes `password=` (and `sslpassword=`) in the query string, and a password whose "@"
was left unencoded is parsed as part of the host. So the query is dropped, and a URL that
cannot be told apart from its password is not shown at all.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

#: Shown instead of a URL that would give its password away, or that cannot be parsed.
UNSHOWN = "the database (its URL not shown)"


def shown_url(url: str) -> str:
    """`url` without its password or query string, an SQLite file's path absolute; UNSHOWN
    when that cannot be made sure of."""
    if url.count("@") > 1:
        return UNSHOWN  # an "@" of the password left unencoded: the rest of it would show
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: several hosts, a bad port
        return UNSHOWN
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        # Which file, wherever the command was run from: a path from the current folder
        # names another store in another folder.
        parsed = parsed.set(database=str(Path(database).resolve()))
    return parsed.set(query={}).render_as_string(hide_password=True)
