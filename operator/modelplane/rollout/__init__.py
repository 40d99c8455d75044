"""Checkpoint rollouts behind canary evaluation gates — the pure core and the evaluation runner.

``suite`` and ``graders`` parse and grade evaluation cases; ``stats`` decides the gate from paired
outcomes; ``analysis`` judges each traffic step from vLLM metrics; ``spec`` says which changes are
gated; ``machine`` is the state machine the handlers drive; ``evaluate`` (the only module with I/O)
sends a suite to the canary and to stable. docs/rollouts.md explains the flow.
"""
