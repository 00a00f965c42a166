"""A worker process for the crash tests, run as `python worker_app.py --db URL ...`.

It registers one job, `steps`: a run of `payload.steps` persisted steps named `step-1`,
`step-2`, ...; each step appends a `start` line when it begins and a `done` line just
before it returns to this process's marker file, so the test can tell, across processes
and kills, which step bodies ran and how often. Events (`run:start`, `step:complete`,
`run:complete`, ...) are appended to the same file.

Marker line: `<kind> <run_id> <step> <pid> <time.time()> <concurrency key>`, `-` when
a field does not apply (a `event:worker:error` line carries the error's context in
place of the step).

Modes:
  loop     process_until_idle in the main thread until no run is pending or running
  start    start() the background worker; stop() once no run is pending or running (and,
           with --stop-file, once that file exists); database errors of this watch are
           marked `watch-error` and waited out, as the worker itself does
  one      process_one() once in the main thread, then exit
  demo     start() + trigger_and_wait() in the main thread; on Ctrl-C stop(timeout=0.5)
  migrate  migrate() once the --go-file exists (no job, no worker), then exit
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from durably import Durably, StepContext, create_durably, define_job

EXIT_INTERRUPTED = 130
# how long after stop(timeout=0.5) was called a `--block`ed step keeps going in demo mode:
# long enough that stop's timeout has surely expired and flagged the run for release
STOP_GRACE = 2.0
BLOCK_LIMIT = 60.0


class StepsInput(BaseModel):
    steps: int = 5
    key: str | None = None
    sleep: float = 0.0


class _Config:
    block: str | None = None
    release_file: Path | None = None
    stop_called_at: float | None = None
    fsync: bool = False


CONFIG = _Config()
_marker_lock = threading.Lock()
_marker_file: Any = None


def mark(kind: str, run_id: str = "-", step: str = "-", key: str | None = None) -> None:
    """Append one marker line (flushed, and fsynced with --fsync) to this process's file."""
    line = f"{kind} {run_id} {step} {os.getpid()} {time.time():.6f} {key or '-'}\n"
    with _marker_lock:
        _marker_file.write(line)
        _marker_file.flush()
        if CONFIG.fsync:
            os.fsync(_marker_file.fileno())


def _blocked_until_released() -> None:
    """Hold a `--block`ed step until the release file exists or stop's timeout surely ran out."""
    deadline = time.monotonic() + BLOCK_LIMIT
    while time.monotonic() < deadline:
        if CONFIG.release_file is not None and CONFIG.release_file.exists():
            return
        stop_called_at = CONFIG.stop_called_at
        if stop_called_at is not None and time.monotonic() > stop_called_at + STOP_GRACE:
            return
        time.sleep(0.02)


def _work(step: StepContext, name: str, number: int, payload: StepsInput) -> Any:
    def work() -> dict[str, int]:
        mark("start", step.run_id, name, payload.key)
        if payload.sleep:
            time.sleep(payload.sleep)
        if name == CONFIG.block:
            _blocked_until_released()
        mark("done", step.run_id, name, payload.key)
        return {"value": number * 10, "pid": os.getpid()}

    return work


def steps_job_fn(step: StepContext, payload: StepsInput) -> dict[str, int]:
    total = 0
    for number in range(1, payload.steps + 1):
        name = f"step-{number}"
        total += step.run(name, _work(step, name, number, payload))["value"]
    return {"sum": total, "pid": os.getpid()}


steps_job = define_job(name="steps", input=StepsInput, run=steps_job_fn)


def _record_events(durably: Durably) -> None:
    def record(event: Any) -> None:
        mark(
            f"event:{event.type}",
            getattr(event, "run_id", None) or "-",
            getattr(event, "step_name", None) or getattr(event, "context", None) or "-",
        )

    for event_type in (
        "run:start",
        "run:complete",
        "run:fail",
        "step:complete",
        "step:fail",
        "worker:error",
    ):
        durably.on(event_type, record)
    durably.on(
        "worker:error",
        lambda e: print(f"worker:error {e.error} ({e.context})", file=sys.stderr, flush=True),
    )


def _unfinished(durably: Durably) -> bool:
    return bool(durably.get_runs(status=["pending", "running"], limit=1))


def _watch_until_done(durably: Durably, stop_file: Path | None, interval: float) -> None:
    """Return once no run is pending or running (and `stop_file` exists, if given)."""
    while True:
        try:
            unfinished = _unfinished(durably)
        except Exception as exc:  # the database is away; the worker waits it out too
            mark("watch-error")
            print(f"watch-error {exc}", file=sys.stderr, flush=True)
            unfinished = True
        if not unfinished and (stop_file is None or stop_file.exists()):
            return
        time.sleep(interval)


def _wait_for_go(go_file: Path | None) -> None:
    if go_file is None:
        return
    deadline = time.monotonic() + BLOCK_LIMIT
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no go file {go_file} within {BLOCK_LIMIT} s")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--markers", required=True, type=Path, help="this process's marker file")
    parser.add_argument(
        "--mode", choices=["loop", "start", "one", "demo", "migrate"], default="loop"
    )
    parser.add_argument("--block", help="step name that blocks until released")
    parser.add_argument("--release-file", type=Path)
    parser.add_argument("--go-file", type=Path, help="wait for this file before working")
    parser.add_argument("--stop-file", type=Path, help="start mode: keep going until it exists")
    parser.add_argument("--steps", type=int, default=5, help="steps of the demo mode's run")
    parser.add_argument("--heartbeat", type=float, default=0.3)
    parser.add_argument("--stale", type=float, default=1.5)
    parser.add_argument("--polling", type=float, default=0.05)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args(argv)

    # a child started from a non-interactive shell may inherit SIGINT as ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    global _marker_file
    _marker_file = open(args.markers, "a", encoding="utf-8")  # noqa: SIM115 - process-long
    CONFIG.block = args.block
    CONFIG.release_file = args.release_file
    CONFIG.fsync = args.fsync

    if args.mode == "migrate":
        with create_durably(args.db) as durably:
            mark("ready")
            _wait_for_go(args.go_file)
            durably.migrate()
            mark("migrated")
        return 0

    with create_durably(
        args.db,
        polling_interval=args.polling,
        heartbeat_interval=args.heartbeat,
        stale_threshold=args.stale,
        max_concurrent_runs=args.max_concurrent,
    ) as durably:
        durably.migrate()
        handle = durably.register({"steps": steps_job})["steps"]
        _record_events(durably)
        mark("ready")
        _wait_for_go(args.go_file)

        if args.mode == "loop":
            while True:
                durably.process_until_idle()
                if not _unfinished(durably):
                    break
                time.sleep(args.polling)
        elif args.mode == "start":
            durably.start()
            _watch_until_done(durably, args.stop_file, args.polling)
            durably.stop()
        elif args.mode == "one":
            try:
                ran = durably.process_one()
            except KeyboardInterrupt:
                mark("interrupted")
                return EXIT_INTERRUPTED
            mark(f"process_one-returned-{ran}")
        else:
            durably.start()
            try:
                result = handle.trigger_and_wait(StepsInput(steps=args.steps))
            except KeyboardInterrupt:
                mark("interrupted")
                CONFIG.stop_called_at = time.monotonic()
                durably.stop(timeout=0.5)
                mark("stopped")
                return EXIT_INTERRUPTED
            mark("completed", result.id)
    mark("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
