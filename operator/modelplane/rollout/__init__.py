"""Checkpoint rollouts behind canary evaluation gates — the pure core and the evaluation runner.

``suite`` and ``graders`` parse and grade evaluation cases; ``stats`` decides the gate from paired
outcomes; ``analysis`` judges each traffic step from vLLM metrics; ``spec`` says which changes are
gated; ``machine`` is the state machine; ``driver`` feeds it once per reconcile (observed children
and status → machine inputs, workloads); ``evaluate`` and ``runtime`` do the rollout's I/O (a suite
sent to the canary and to stable, or a custom evaluator Job); ``controls`` is the user's
promote/pause/resume/abort command. docs/rollouts.md explains the flow.
"""
