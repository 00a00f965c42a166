"""A worker process for test_promise_processes.py: `python promise_worker.py --db URL ...`.

It registers one job, `steps`: it logs `start` outside any step (with step.log), then
runs `payload.steps` persisted steps `step-1`, `step-2`, ... Each step body appends a
`start` marker when it begins and a `done` marker before it returns, and logs
`end <step>` with `{"pid": <this pid>}` just before `done`, so the test can tell which
process ran which step body, and which process's logs were stored.

Marker line: `<kind> <run_id> <step> <pid> <time.time()>`; `-` when a field does not apply.

Options that make a run stop where the test wants it (all wait for --release-file):
  --gate-before STEP   wait in the job function, outside any step, before STEP
  --hold-at-start STEP wait in a `step:start` listener of STEP: after the worker checked
                       its lease for the step, before the step body starts
  --block STEP         wait inside the body of STEP

Modes: `one` runs process_one() once; `loop` runs process_until_idle() until no run is
pending or running.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from durably import StepContext, create_durably, define_job
from durably.plugins import with_log_persistence

WAIT_LIMIT = 60.0


class StepsInput(BaseModel):
    steps: int = 4


class _Config:
    gate_before: str | None = None
    hold_at_start: str | None = None
    block: str | None = None
    release_file: Path | None = None
    markers: Any = None


CONFIG = _Config()
_lock = threading.Lock()


def mark(kind: str, run_id: str = "-", step: str = "-") -> None:
    """Append one marker line, flushed at once (a frozen or killed process loses nothing)."""
    with _lock:
        CONFIG.markers.write(f"{kind} {run_id} {step} {os.getpid()} {time.time():.6f}\n")
        CONFIG.markers.flush()


def _wait_for_release() -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while CONFIG.release_file is None or not CONFIG.release_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no release file within {WAIT_LIMIT} s")
        time.sleep(0.005)


def _body(step: StepContext, name: str) -> Any:
    def work() -> dict[str, int]:
        mark("start", step.run_id, name)
        if name == CONFIG.block:
            _wait_for_release()
        step.log.info(f"end {name}", {"pid": os.getpid()})
        mark("done", step.run_id, name)
        return {"pid": os.getpid()}

    return work


def _hold_at_start(event: Any) -> None:
    if event.step_name == CONFIG.hold_at_start:
        mark("holding", event.run_id, event.step_name)
        _wait_for_release()


def steps_job_fn(step: StepContext, payload: StepsInput) -> None:
    step.log.info("start")
    for number in range(1, payload.steps + 1):
        name = f"step-{number}"
        if name == CONFIG.gate_before:
            mark("gate", step.run_id, name)
            _wait_for_release()
        step.run(name, _body(step, name))


steps_job = define_job(name="steps", input=StepsInput, run=steps_job_fn)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--markers", required=True, type=Path)
    parser.add_argument("--mode", choices=["one", "loop"], default="loop")
    parser.add_argument("--gate-before")
    parser.add_argument("--hold-at-start")
    parser.add_argument("--block")
    parser.add_argument("--release-file", type=Path)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--stale", type=float, default=1.0)
    parser.add_argument("--log-persistence", action="store_true")
    args = parser.parse_args()
    CONFIG.markers = open(args.markers, "a", encoding="utf-8")  # noqa: SIM115 - process-long
    CONFIG.gate_before = args.gate_before
    CONFIG.hold_at_start = args.hold_at_start
    CONFIG.block = args.block
    CONFIG.release_file = args.release_file

    with create_durably(
        args.db,
        polling_interval=0.05,
        heartbeat_interval=args.heartbeat,
        stale_threshold=args.stale,
    ) as durably:
        durably.migrate()
        if args.log_persistence:
            durably.use(with_log_persistence())
        durably.register({"steps": steps_job})
        durably.on("run:start", lambda e: mark("event:run:start", e.run_id))
        durably.on("step:start", _hold_at_start)
        mark("ready")
        if args.mode == "one":
            mark(f"process_one-returned-{durably.process_one()}")
        else:
            while True:
                durably.process_until_idle()
                if not durably.get_runs(status=["pending", "running"], limit=1):
                    break
                time.sleep(0.05)
    mark("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
