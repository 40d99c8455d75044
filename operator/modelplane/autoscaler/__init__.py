"""The autoscaler: a pure policy that turns what the pods report into a desired replica count.

``policy`` decides (observation + spec + previous state → decision), ``cost`` prices a fleet and
measures $ per million generated tokens, ``throughput`` sizes a fleet from the token rates. Nothing
here does I/O: the controller reads the pods' metrics (``modelplane.metrics``), calls ``decide`` and
applies.
"""

from __future__ import annotations
