"""Pure protocol layer: typed messages, the per-context state machine and inline markup. No I/O."""
