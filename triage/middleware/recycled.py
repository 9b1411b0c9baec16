"""`python -m triage.middleware.recycled <process>`: a recycled worker process, started again.

Guarantees: run only by `recycling.py` through `execv`, in the process it replaces. It restores
the import path, records which worker process it is (so that it can recycle again), keeps its
log pipe from the processes its actors start, and runs Dramatiq's own worker-process function
with the same arguments, worker id and log pipe: signals (blocked until its handlers are in
place, as at a first boot), logging, the broker's boot and the worker's threads are
Dramatiq's. Forks are not started again (the master started them at its boot and runs them).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from multiprocessing.connection import Connection

from dramatiq import cli
from dramatiq.canteen import Canteen
from dramatiq.compat import StreamablePipe

from triage.middleware.recycling import WorkerProcess, resumed_as


def main(encoded: str) -> None:
    process, path = WorkerProcess.decoded(encoded)
    sys.path[:] = path
    for fd in {process.log_fd, *process.pipes}:  # kept from the processes its actors start
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    resumed_as(process)
    canteen = multiprocessing.Value(Canteen)
    canteen.initialized = True  # type: ignore[attr-defined]  # the master runs the forks already
    pipe = StreamablePipe(Connection(process.log_fd, readable=False))  # type: ignore[no-untyped-call]
    cli.worker_process(process.args, process.worker_id, pipe, canteen, multiprocessing.Event())  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main(sys.argv[1])
