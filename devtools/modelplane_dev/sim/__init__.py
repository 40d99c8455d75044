"""A vLLM-compatible simulator for local runs, tests and benchmarks.

Layers, each usable alone:

- ``engine``: a pure, clock-agnostic continuous-batching model of one vLLM replica (used in real time
  by the server and in virtual time by the autoscaling benchmark);
- engine parameters per GPU type and model size come from the operator's performance model
  (``modelplane.planner.performance``), so the simulator and the planner's priors agree;
- ``quality``: what a checkpoint answers and how well (evaluation tasks it can solve, per-checkpoint
  accuracy, error rate, slowdown, load time) and a generator of evaluation suites;
- ``config``: the replica's configuration, parsed from ``vllm serve`` args;
- ``server``: the OpenAI-compatible HTTP server with vLLM's ``/metrics`` (many per process);
- ``cli``: ``modelplane sim``.
"""
