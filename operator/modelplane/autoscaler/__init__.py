"""The autoscaler: a pure policy that turns what the pods report into a desired replica count.

``policy`` decides (observation + spec + previous state → decision), ``cost`` prices a fleet and
measures $ per million generated tokens, ``metrics`` parses a vLLM ``/metrics`` page into the
numbers the policy reads. Nothing here does I/O: the handlers scrape, call ``decide`` and apply.
"""

from __future__ import annotations
