"""A durably worker process for the libSQL kill tests.

Run: python worker.py URL JOB RUN_ID|all MARKERS [--block STEP] [--stale S] [--peer FILE]

It registers one job, JOB: `payload.steps` steps named `step-1`, `step-2`, ...; step i
returns i * 10, and the job returns `{"sum": ..., "pid": <this process>}`. Each step body
appends `start <run_id> <step> <pid>` when it begins and `done ...` just before it returns
to the MARKERS file (flushed and fsynced, so the lines survive a SIGKILL); every
`step:complete` event appends `event:step:complete ...`. A step named by `--block` never
returns: the test kills the process there. With `--peer` (another worker's MARKERS file), a
step body, once started, waits until that worker has started a step too: two workers
then surely hold two runs at the same moment. The background worker runs (claims, heartbeats,
stale recovery after `--stale` seconds) until RUN_ID (with `all`: every run of JOB) is
completed, failed or cancelled; then the process stops its worker and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from durably import StepContext, create_durably, define_job

BLOCK_LIMIT = 600.0
WAIT_LIMIT = 120.0
PEER_LIMIT = 60.0


def wait_for_peer(path: str) -> None:
    """Return once the worker writing `path` has started a step (or after a long limit)."""
    deadline = time.monotonic() + PEER_LIMIT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as peer:
                if any(line.startswith("start ") for line in peer):
                    return
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("job")
    parser.add_argument("run_id")
    parser.add_argument("markers")
    parser.add_argument("--block", default=None)
    parser.add_argument("--stale", type=float, default=30.0)
    parser.add_argument("--peer", default=None)
    args = parser.parse_args(argv)
    markers = open(args.markers, "a")  # noqa: SIM115 - open for the life of the process

    def mark(kind: str, run_id: str, step: str) -> None:
        markers.write(f"{kind} {run_id} {step} {os.getpid()}\n")
        markers.flush()
        os.fsync(markers.fileno())

    def job(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
        total = 0
        for i in range(1, int(payload["steps"]) + 1):
            name = f"step-{i}"

            def body(i: int = i, name: str = name) -> int:
                mark("start", step.run_id, name)
                if name == args.block:
                    time.sleep(BLOCK_LIMIT)
                if args.peer is not None:
                    wait_for_peer(args.peer)
                mark("done", step.run_id, name)
                return i * 10

            total += step.run(name, body)
        return {"sum": total, "pid": os.getpid()}

    d = create_durably(
        args.url, polling_interval=0.05, heartbeat_interval=0.2, stale_threshold=args.stale
    )
    d.register({args.job: define_job(name=args.job, run=job)})
    d.on("step:complete", lambda e: mark("event:step:complete", e.run_id, e.step_name))
    d.start()
    deadline = time.monotonic() + WAIT_LIMIT
    try:
        while time.monotonic() < deadline:
            if args.run_id == "all":
                if not d.get_runs(job_name=args.job, status=["pending", "running"]):
                    return 0
            else:
                run = d.get_run(args.run_id)
                if run is not None and run.status in ("completed", "failed", "cancelled"):
                    return 0
            time.sleep(0.05)
        print(f"run(s) {args.run_id} did not finish within {WAIT_LIMIT} s", file=sys.stderr)
        return 1
    finally:
        d.stop(timeout=10)
        d.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
