"""`python -m triage.admin.recycled <process>`: a recycled worker process, started again.

Guarantees: run only by `triage.middleware.recycling` through `execv`, in the process it
replaces. It restores the import path, records which worker process it is (so that it can
recycle again), and runs Dramatiq's own worker-process function with the same arguments,
worker id and log pipe: signals, logging, the broker's boot and the worker's threads are
Dramatiq's, as in the first start. Forks are not started again (the master already runs them).
"""

from __future__ import annotations

import base64
import multiprocessing
import pickle
import sys
from multiprocessing.connection import Connection


def main(encoded: str) -> None:
    from dramatiq import cli
    from dramatiq.canteen import Canteen
    from dramatiq.compat import StreamablePipe

    from triage.middleware.recycling import WorkerProcess, resumed_as

    args, worker_id, log_fd, path = pickle.loads(base64.urlsafe_b64decode(encoded))  # noqa: S301 (written by this process before its execv)
    sys.path[:] = path
    resumed_as(WorkerProcess(args=args, worker_id=worker_id, log_fd=log_fd))
    canteen = multiprocessing.Value(Canteen)
    canteen.initialized = True  # type: ignore[attr-defined]  # the forks run already: the master started them at its boot
    booted = multiprocessing.Event()
    cli.worker_process(args, worker_id, StreamablePipe(Connection(log_fd, readable=False)), canteen, booted)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main(sys.argv[1])
