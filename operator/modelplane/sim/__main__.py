"""``python -m modelplane.sim``: the ``modelplane sim`` command without the other subcommands' imports."""

from __future__ import annotations

import sys

from modelplane.sim.cli import main

sys.exit(main())
