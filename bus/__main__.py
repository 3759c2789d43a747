"""`python -m bus` is the `civicbus` command (used by the supervisor to start its parts)."""

from bus.cli import app

app(prog_name="civicbus")
