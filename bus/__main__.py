"""`python -m bus` is the `civicbus` command (so is `python -m civicbus`, which `civicbus run`
uses to start its parts, so that their command lines name civicbus)."""

from bus.cli import app

app(prog_name="civicbus")
