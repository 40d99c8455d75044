"""``python -m modelplane_dev.sim``: the ``modelplane sim`` command without the other subcommands' imports."""

from __future__ import annotations

import sys

from modelplane_dev.sim.cli import main

sys.exit(main())
