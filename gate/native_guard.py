"""A native library's crash must end as gate's exit 3, never as a raw signal.

A segmentation fault in faiss, torch, ITK or a plugin's extension kills the process by a signal, past
every ``except``: the shell sees 139, which no caller of gate knows how to read. So the commands that run
checks (``validate``, ``promote``, ``demo``) run in a child process of the same command line; this parent
waits, passes on SIGTERM and SIGINT, and turns the child's death by a signal into exit 3 with one line.
The child writes the Python stack of every thread at the moment of the crash (``faulthandler``) to a crash
log that the line names. Nothing was validated, and no alias was set: promotion is the child's last step.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from gate.errors import ExitCode

#: set in the child's environment: the path of the crash log its faulthandler writes to
CHILD_ENV = "GATE_NATIVE_CRASH_LOG"
#: the commands whose checks load native libraries
SUPERVISED = frozenset({"validate", "promote", "demo"})


def in_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def arm_child() -> None:
    """In the child: dump every thread's Python stack to the crash log on a fatal signal."""
    import faulthandler

    path = os.environ.get(CHILD_ENV)
    if path:
        # kept open for the life of the process: faulthandler writes to the descriptor from a signal handler
        arm_child.log = open(path, "w", encoding="utf-8")  # type: ignore[attr-defined]
        faulthandler.enable(file=arm_child.log, all_threads=True)


def supervise(argv: list[str]) -> int | None:
    """Run ``gate argv`` in a child and return its exit code, or 3 when a signal killed it; None when this
    command is not supervised (or this process is already the child): the caller runs it itself."""
    if in_child() or not argv or argv[0] not in SUPERVISED:
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log = Path(tempfile.gettempdir()) / f"gate-native-crash-{stamp}-{os.getpid()}.log"
    from gate.serve.validation_job import PARENT_PID_ENV

    # its own process group: a ^C at the terminal reaches this parent alone, which passes it on once; and it
    # dies with this parent (die_with_parent), so that a killed gate leaves no validation running
    child = subprocess.Popen([sys.executable, "-m", "gate.cli", *argv], process_group=0,
                             env={**os.environ, CHILD_ENV: str(log), PARENT_PID_ENV: str(os.getpid())})
    previous = {s: signal.signal(s, lambda sig, _frame: child.send_signal(sig)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code >= 0:
        log.unlink(missing_ok=True)
        return code
    name = _signal_name(-code)
    if name in ("SIGINT", "SIGTERM"):
        # stopped, not crashed: die of the same signal, as an unsupervised gate would, so that a caller that
        # stopped it (the webhook service, a CI runner) reads the stop it asked for (a negative return code)
        log.unlink(missing_ok=True)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return int(ExitCode.INTERRUPTED)  # reached only if the signal is blocked
    why = "it ran out of memory or was killed" if name == "SIGKILL" else "a native library crashed"
    where = f"the Python stack at the crash is in {log}" if log.exists() and log.stat().st_size else \
        "no Python stack was written"
    print(f"gate: crash: the process was killed by {name}: {why} (nothing was validated or promoted; {where})",
          file=sys.stderr)
    return int(ExitCode.VALIDATOR_ERROR)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
