"""Tools around the civicbus engine that integrators use directly.

- `civicbus.testing`: the adapter conformance kit (a pytest plugin).
- `civicbus.sandbox`: the simulated back-ends of the sandbox city, served over real protocols.
  They are simulations, not the real systems (the SAP one above all: no SAP system runs here).

The engine itself lives in `bus` (API, store, relay, workers), the canonical model in `schemas`,
and the adapter SDK in `adapters`.
"""
