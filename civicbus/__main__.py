"""`python -m civicbus` is the `civicbus` command, as `python -m bus` is.

`civicbus run` starts its parts this way so that their command lines name civicbus: an
operator's `pgrep -af civicbus` lists every part, not only the supervisor.
"""

from bus.cli import app

app(prog_name="civicbus")
