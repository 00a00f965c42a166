"""A worker process of the fault campaign (`_campaign.py`), run as
`python campaign_worker.py --db URL --side-log PATH --stop-file PATH ...`.

It migrates (retrying while the database is away; a `--die-in-migrate` victim kills
itself inside migrate()), registers the `campaign` job, writes its events and a pulse to
the shared side log and works until the stop file exists: in `start` mode through
`Durably.start()` (then `stop()`), in `loop` mode through `process_until_idle()` in the
main thread. It exits 0 after a clean stop; the campaign kills it otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _campaign
from _campaign_rules import PULSE

from durably import create_durably

MIGRATE_LIMIT = 60.0


def _pulse(log: _campaign.SideLog) -> None:
    """A line every PULSE seconds: a gap between two shows the process was starved."""
    while True:
        log.write("pulse")
        time.sleep(PULSE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--side-log", required=True, type=Path)
    parser.add_argument("--stop-file", required=True, type=Path)
    parser.add_argument("--mode", choices=["start", "loop"], default="start")
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--stale", type=float, default=2.0)
    parser.add_argument("--polling", type=float, default=0.05)
    parser.add_argument(
        "--die-in-migrate",
        type=float,
        help="SIGKILL this process this many seconds after migrate() begins",
    )
    args = parser.parse_args(argv)

    log = _campaign.SideLog(args.side_log)
    _campaign.install_side_log(log)
    log.write("spawn", extra=f"{args.mode}x{args.max_concurrent}")
    threading.Thread(target=_pulse, args=(log,), daemon=True).start()
    with create_durably(
        args.db,
        polling_interval=args.polling,
        heartbeat_interval=args.heartbeat,
        stale_threshold=args.stale,
        max_concurrent_runs=args.max_concurrent,
    ) as durably:
        log.write("migrate-begin")
        if args.die_in_migrate is not None:
            # a timer of our own: the no-op migrate takes milliseconds, less than an
            # outside killer can aim at
            threading.Timer(
                args.die_in_migrate, lambda: os.kill(os.getpid(), signal.SIGKILL)
            ).start()
        deadline = time.monotonic() + MIGRATE_LIMIT
        while True:
            try:
                durably.migrate()
                break
            except Exception as exc:  # a killed session or a restarting server
                log.write("werr", extra="migrate")
                print(f"migrate failed: {exc!r}", file=sys.stderr, flush=True)
                if time.monotonic() > deadline:
                    return 3
                time.sleep(0.2)
        log.write("migrate-end")
        durably.register({_campaign.JOB_NAME: _campaign.campaign_job})
        _campaign.install_listeners(durably, log)
        durably.on(
            "worker:error",
            lambda e: print(f"worker:error {e.error} ({e.context})", file=sys.stderr, flush=True),
        )
        log.write("ready")
        if args.mode == "start":
            durably.start()
            while not args.stop_file.exists():
                time.sleep(0.05)
            durably.stop()
        else:
            while not args.stop_file.exists():
                try:
                    ran = durably.process_until_idle()
                except Exception as exc:  # the database went away under the claim
                    log.write("werr", extra="process_until_idle")
                    print(f"process_until_idle failed: {exc!r}", file=sys.stderr, flush=True)
                    ran = 0
                if not ran:
                    time.sleep(args.polling)
    log.write("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
