"""The sandbox city's SIMULATED back-ends, served over their real protocols on loopback.

These are simulations for tests, demos and local development, not the real systems: each keeps
its work items in a file under the state dir (default `var/sandbox/`), offers a control endpoint
(`/_sandbox/`) to move items through their statuses and to make it fail (down, slow, reject), and
can progress items on its own. Start them with `civicbus sandbox`; the registry of simulators,
and how to add one, is in `civicbus.sandbox.runner`.
"""

from civicbus.sandbox.runner import (
    DEFAULT_STATE_DIR,
    SIMULATORS,
    Running,
    ServeOptions,
    Simulator,
    start,
    stop,
)

__all__ = [
    "DEFAULT_STATE_DIR",
    "SIMULATORS",
    "Running",
    "ServeOptions",
    "Simulator",
    "start",
    "stop",
]
