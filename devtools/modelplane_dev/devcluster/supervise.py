"""Keep one dev-cluster process running: start it, and start it again whenever it dies.

``python -m modelplane_dev.devcluster.supervise --name NAME -- ARGV...`` runs ARGV as its child
and, after any exit it did not ask for (a crash, an uncaught error, a SIGKILL), starts it again
after a bounded exponential backoff: 1 s doubling up to 30 s, back to 1 s once a child has run
for a minute. Each exit is logged with its code and how long the child ran. SIGTERM or SIGINT is
passed on to the child; the supervisor then waits for it and exits without restarting it.

The dev cluster runs its pod agent under this supervisor. Both share one process group, which is
what the cluster records and what ``modelplane cluster down`` ends, so nothing outlives ``down``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
#: A child that ran this long was healthy: its next crash starts the backoff from the beginning.
HEALTHY_AFTER = 60.0


def restart_delay(failures: int, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> float:
    """Seconds to wait before the next start, after ``failures`` quick exits in a row (0: the first)."""
    return float(min(cap, first * 2.0 ** min(failures, 30)))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def supervise(name: str, argv: list[str], *, first: float = FIRST_DELAY, cap: float = MAX_DELAY,
              healthy_after: float = HEALTHY_AFTER) -> int:
    """Run ``argv`` until asked to stop (SIGTERM/SIGINT); returns the last child's exit code."""
    # An Event, not a bool: the signal handler sets it while the loop below runs. (The waits
    # are short sleeps, not Event.wait, so that the handler never runs inside the Event's lock.)
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failures = 0
    code = 0
    while not stopping.is_set():
        started = time.monotonic()
        child = subprocess.Popen(argv)
        if stopping.is_set():  # the signal came between the check and the start
            child.terminate()
        code = child.wait()
        if stopping.is_set():
            break
        ran = time.monotonic() - started
        if ran >= healthy_after:
            failures = 0
        delay = restart_delay(failures, first=first, cap=cap)
        failures += 1
        print(f"[supervise] {name} (pid {child.pid}) exited with {describe_exit(code)} after "
              f"{ran:.1f} s; starting it again in {delay:.1f} s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + delay
        while not stopping.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelplane_dev.devcluster.supervise",
        description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="what the child is, for the log")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the child's command line, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to supervise after --")
    supervise(args.name, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
