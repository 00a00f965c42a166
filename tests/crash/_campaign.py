"""A seeded, randomized fault campaign against durably's central promise.

Shared by the CI test (`tests/crash/test_fault_campaign.py`) and the long campaign
(`benchmarks/fault_campaign.py`); the worker processes are `tests/crash/campaign_worker.py`.
Only durably's public API is used (`create_durably`, `define_job`, `StepContext`, the
`Durably` methods and events), so the campaign outlives any restructuring of the core.

The promise under test: a step whose result was committed never runs again; at most one
worker executes a run at any moment (only the step in flight when a worker dies, freezes
or loses its claim may run again); no run is lost or stuck; outputs are correct.

How it runs
-----------
A controller (this module, in the test's process) starts several worker processes on one
database (a SQLite file, PostgreSQL or MariaDB), with a short heartbeat and stale
threshold so that recovery happens within the campaign. It triggers runs of the job
`campaign` (a chain of `steps` steps whose values depend on the previous step's value),
and, at seeded random moments (`random.Random(seed)`), injects faults:

  kill          SIGKILL of a worker (busy ones preferred), which is then replaced
  freeze        SIGSTOP, SIGCONT after stale_threshold + 0.5..1.5 s: the worker's runs are
                taken over while it is frozen. A worker is frozen only at a moment none of
                its sessions is inside a transaction (checked after SIGSTOP; otherwise it
                is thawed at once and tried again, and that brief stop is recorded too): a
                process frozen holding SQLite's write lock or a row lock stalls every other
                worker, which would turn a fault of one worker into a fault of all
  connkill      (servers) the worker's database sessions are killed from the controller's
                own connection: pg_terminate_backend / KILL CONNECTION, sessions found by
                the client ports of the worker's sockets (/proc)
  cancel        `cancel(run)` of a run in flight; `retry(run)` 0.6..1.2 s later
  migrate-kill  an extra worker is SIGKILLed while it is inside `migrate()`; the campaign
                also starts on a dropped schema with one such victim killed in the first,
                real migration
  pg-restart    (flag, PostgreSQL only, at most once) the server is stopped and started

The fault plan is seeded; the interleaving with the workers is not (it depends on the
scheduler), so a seed reproduces the faults, not the exact outcome.

After the fault phase every frozen worker is thawed, every cancelled run retried, and the
campaign waits (bounded) until every run is terminal, then stops the workers and checks
the invariants from the database (through a `Durably`: `get_runs`, `get_steps`) and the
side log.

The side log
------------
One file shared by all workers, opened with O_APPEND; every line is one `os.write` of
`<time> <pid> <kind> <run> <step> <token> <extra>` (`time.time()`: CLOCK_REALTIME is one
clock for all processes of the host and for the database servers on it; `-` for an empty
field). A line reaches the kernel before the writer goes on, so a SIGKILL loses none; the
step function's lines are also fsynced. Kinds:

  claim   run:start event: the worker has claimed <run> (written after the claim committed)
  pre     job code, just before `step.run(<step>)`: the step boundary comes next
  start   the first line of the step function; <token> names this execution
  done    the last line of the step function before it returns
  ack     step:complete event: the result of the execution <token> was committed
  end     run:complete event;  fail: run:fail event;  werr: worker:error (<extra>: context)
  pulse   every PULSE seconds from a thread of the worker: a gap shows it was starved
  spawn / migrate-begin / migrate-end / ready / exit: the worker's life

The controller keeps its own log of faults, each with wall times taken just before and
just after the action (the actual effect lies between them): kill [t0, t1]; freeze
[SIGSTOP sent, SIGCONT returned] (or the kill of the frozen process); connkill [t0, t1];
cancel [call, return]; retry [call, return]; pg-restart [stop, ready again].

The rules checked on all this, and why a correct durably passes them, are in
`_campaign_rules.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from _campaign_rules import (
    Evidence,
    Fault,
    RunState,
    Violation,
    WorkerInfo,
    check,
    load_evidence,
    parse_lines,
    save_evidence,
    step_value,
)
from pydantic import BaseModel

from durably import (
    Durably,
    InvalidRunStateError,
    MigrationError,
    StepContext,
    create_durably,
    define_job,
)

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "campaign_worker.py"
REPO_ROOT = HERE.parent.parent
JOB_NAME = "campaign"

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The workers' timing: recovery must happen within the campaign."""

    heartbeat: float = 0.2
    stale: float = 2.0
    polling: float = 0.05


# -- the job ---------------------------------------------------------------------------

STEP_SLEEP_MAX = 0.08  # seconds a sleeping step sleeps at most
GAP_SLEEP_MAX = 0.06  # seconds the job sleeps between steps at most (kills land there too)


class CampaignInput(BaseModel):
    seed: int
    steps: int = 6


class SideLog:
    """The append-only side log of one worker process (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def write(
        self,
        kind: str,
        run: str | None = None,
        step: str | None = None,
        token: str | None = None,
        extra: str | None = None,
        *,
        sync: bool = False,
    ) -> None:
        fields = [_field(v) for v in (run, step, token, extra)]
        line = f"{time.time():.6f} {self.pid} {kind} {' '.join(fields)}\n"
        os.write(self.fd, line.encode())
        if sync:
            os.fsync(self.fd)


def _field(value: str | None) -> str:
    if not value:
        return "-"
    return "_".join(str(value).split())[:200]


_side_log: SideLog | None = None
_tokens = itertools.count(1)


def install_side_log(log: SideLog) -> None:
    """Make the job write to `log` (called by the worker process; never by the controller)."""
    global _side_log
    _side_log = log


def _log() -> SideLog:
    if _side_log is None:
        raise RuntimeError("the campaign job runs only in campaign_worker.py processes")
    return _side_log


def _step_body(
    run_id: str, name: str, index: int, previous: int, seed: int, pause: float
) -> Callable[[], dict[str, Any]]:
    def body() -> dict[str, Any]:
        log = _log()
        token = f"{log.pid}.{next(_tokens)}"
        log.write("start", run_id, name, token, sync=True)
        if pause:
            time.sleep(pause)
        value = step_value(seed, index, previous)
        log.write("done", run_id, name, token, sync=True)
        return {"value": value, "token": token}

    return body


def campaign_job_fn(step: StepContext, payload: CampaignInput) -> dict[str, Any]:
    # the same sleeps on every attempt of the run: drawn from its seed, in step order
    rng = random.Random(payload.seed)
    values: list[int] = []
    previous = payload.seed
    for index in range(payload.steps):
        gap = rng.random() * GAP_SLEEP_MAX
        pause = rng.random() * STEP_SLEEP_MAX if rng.random() < 0.7 else 0.0
        time.sleep(gap)
        name = f"s{index}"
        _log().write("pre", step.run_id, name)
        result = step.run(name, _step_body(step.run_id, name, index, previous, payload.seed, pause))
        previous = int(result["value"])
        values.append(previous)
    return {"values": values, "total": sum(values)}


campaign_job = define_job(name=JOB_NAME, input=CampaignInput, run=campaign_job_fn)


def install_listeners(durably: Durably, log: SideLog) -> None:
    """The event lines of the side log: claim, ack, end, fail, werr."""
    durably.on("run:start", lambda e: log.write("claim", e.run_id))
    durably.on(
        "step:complete",
        lambda e: log.write(
            "ack",
            e.run_id,
            e.step_name,
            e.output.get("token") if isinstance(e.output, dict) else None,
        ),
    )
    durably.on("run:complete", lambda e: log.write("end", e.run_id))
    durably.on("run:fail", lambda e: log.write("fail", e.run_id, e.failed_step_name, extra=e.error))
    durably.on(
        "worker:error", lambda e: log.write("werr", getattr(e, "run_id", None), extra=e.context)
    )


# -- the controller -----------------------------------------------------------------------

UNFINISHED = ["pending", "running", "cancelled"]
FAULT_WEIGHTS = {"kill": 3, "freeze": 3, "connkill": 3, "cancel": 2, "migrate-kill": 1}


@dataclass
class CampaignConfig:
    backend: str  # sqlite, postgres or mysql
    url: str
    workdir: Path
    seed: int
    faults: int | None = None  # stop injecting after this many faults ...
    duration: float | None = None  # ... or after this many seconds, whichever comes first
    workers: int = 3
    steps: int = 6
    initial_runs: int = 8
    trigger_every: float = 0.5
    fault_gap: tuple[float, float] = (0.3, 1.2)
    weights: dict[str, int] = field(default_factory=lambda: dict(FAULT_WEIGHTS))
    fresh_schema: bool = True
    pg_restart: bool = False
    settings: Settings = field(default_factory=Settings)
    drain_timeout: float = 60.0
    stop_timeout: float = 30.0
    max_runs: int = 100_000


@dataclass
class CampaignResult:
    config: CampaignConfig
    violations: list[Violation]
    stats: dict[str, Any]
    wall: float

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_rule(self) -> Counter[str]:
        return Counter(v.rule for v in self.violations)

    def summary(self, limit: int = 40) -> str:
        c, s = self.config, self.stats
        out = [
            f"fault campaign on {c.backend}: seed {c.seed}, {s['runs']} runs, "
            f"{s['steps_committed']} steps committed, wall {self.wall:.1f} s",
            f"  faults injected: {s['faults']} "
            f"(migrate-kills inside migrate(): {s['migrate_kills_inside_migrate']})",
            f"  executions {s['executions']}, allowed reruns of uncommitted steps "
            f"{s['reruns_allowed']}, committed steps executed again "
            f"{s['committed_steps_executed_again']}",
            f"  lost runs {s['lost_runs']}, stuck runs {s['stuck_runs']}, max holders "
            f"{s['max_holders']}, workers spawned {s['workers_spawned']}, starved gaps "
            f"{s['starved_gaps']}",
            f"  violations: {dict(sorted(self.by_rule().items())) or 'none'}",
        ]
        for v in self.violations[:limit]:
            out.append(f"    {v}")
        if len(self.violations) > limit:
            out.append(f"    ... and {len(self.violations) - limit} more")
        out.append(f"  side log and worker logs: {c.workdir}")
        return "\n".join(out)


@dataclass
class _Worker:
    label: str
    proc: subprocess.Popen[bytes]
    mode: str
    victim: bool
    log_path: Path
    log_file: Any
    killed_at: float | None = None
    frozen_at: float | None = None  # wall time of the SIGSTOP while frozen
    thaw_due: float | None = None  # monotonic
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.proc.poll() is None


def tcp_ports(pid: int) -> set[int]:
    """The local TCP ports of `pid`'s sockets (its database sessions), read from /proc."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = row.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _process_stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


class Campaign:
    """Runs one campaign (see the module docstring) and checks it."""

    def __init__(self, config: CampaignConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.dir = config.workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.side_path = self.dir / "side.log"
        self.stop_file = self.dir / "stop"
        self.faults: list[Fault] = []
        self.early: list[Violation] = []
        self.workers: list[_Worker] = []
        self.triggered: set[str] = set()
        self.retries: dict[str, float] = {}  # run id -> monotonic due time
        self.holding: dict[int, set[str]] = defaultdict(set)
        self.ready: set[int] = set()
        self._used_pids: set[int] = set()
        self.injected: Counter[str] = Counter()
        self._tail_offset = 0
        self._tail_rest = b""
        self._serial = itertools.count(1)
        self.app: Durably | None = None
        self.admin: sa.Engine | None = None
        self.stuck: list[tuple[str, str]] = []
        self._restarted = False
        self._fault_log = open(self.dir / "faults.log", "w", encoding="utf-8")  # noqa: SIM115

    # -- plumbing --------------------------------------------------------------------

    @property
    def server(self) -> bool:
        return self.config.backend in ("postgres", "mysql")

    def _record(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        self._fault_log.write(
            f"{fault.t0:.6f} {fault.t1:.6f} {fault.kind} pid={fault.pid} run={fault.run} "
            f"{fault.note}\n"
        )
        self._fault_log.flush()
        return fault

    def _safely(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, fn()), or (False, None) when the database is away (a server restart)."""
        try:
            return True, fn()
        except InvalidRunStateError:
            raise
        except Exception as exc:
            self._fault_log.write(f"{time.time():.6f} controller-error {exc!r}\n")
            return False, None

    def _tail(self) -> None:
        """Follow the side log: which runs each worker holds (to aim faults at busy ones)."""
        try:
            with open(self.side_path, "rb") as f:
                f.seek(self._tail_offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._tail_offset += len(data)
        data = self._tail_rest + data
        *complete, self._tail_rest = data.split(b"\n")
        for raw in complete:
            parts = raw.decode(errors="replace").split(" ")
            if len(parts) != 7:
                continue
            pid, kind, run = int(parts[1]), parts[2], parts[3]
            if kind == "claim":
                self.holding[pid].add(run)
            elif kind in ("end", "fail", "werr"):
                self.holding[pid].discard(run)
            elif kind == "ready":
                self.ready.add(pid)

    def _spawn(self, *, die_in_migrate: float | None = None) -> _Worker:
        label = f"w{next(self._serial)}"
        mode = self.rng.choice(["start", "start", "loop"])
        concurrent = self.rng.choice([1, 2]) if mode == "start" else 1
        s = self.config.settings
        log_path = self.dir / f"{label}.out"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed at shutdown
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        victim = die_in_migrate is not None
        extra = ["--die-in-migrate", f"{die_in_migrate:.4f}"] if victim else []
        argv = [
            sys.executable,
            "-u",
            str(WORKER_SCRIPT),
            "--db",
            self.config.url,
            "--side-log",
            str(self.side_path),
            "--stop-file",
            str(self.stop_file),
            "--mode",
            mode,
            "--max-concurrent",
            str(concurrent),
            "--heartbeat",
            str(s.heartbeat),
            "--stale",
            str(s.stale),
            "--polling",
            str(s.polling),
            *extra,
        ]
        while True:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            if proc.pid not in self._used_pids:
                break
            # the side log names processes by pid: a reused one would merge two workers
            proc.kill()
            proc.wait()
        self._used_pids.add(proc.pid)
        worker = _Worker(label, proc, f"{mode}x{concurrent}", victim, log_path, log_file)
        self.workers.append(worker)
        self._fault_log.write(
            f"{time.time():.6f} spawn {label} pid={proc.pid} {worker.mode} "
            f"die-in-migrate={die_in_migrate}\n"
        )
        return worker

    def _kill(self, worker: _Worker, kind: str = "kill", note: str = "") -> None:
        t0 = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        t1 = time.time()
        if worker.frozen_at is not None:
            self._record(Fault("freeze", worker.frozen_at, t1, worker.pid, note="killed frozen"))
            worker.frozen_at = worker.thaw_due = None
        worker.killed_at = t0
        self._record(Fault(kind, t0, t1, worker.pid, note=note))
        self.holding.pop(worker.pid, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(10)

    def _thaw(self, worker: _Worker) -> None:
        if worker.frozen_at is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGCONT)
        self._record(Fault("freeze", worker.frozen_at, time.time(), worker.pid))
        worker.frozen_at = worker.thaw_due = None

    def _outside_transaction(self, pid: int) -> bool:
        """True if the (stopped) process `pid` holds no open transaction or lock."""
        if self.config.backend == "sqlite":
            path = sa.engine.make_url(self.config.url).database or ""
            for _ in range(10):
                # the write lock free at any moment: the frozen process does not hold it
                try:
                    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        conn.execute("ROLLBACK")
                        return True
                    finally:
                        conn.close()
                except sqlite3.OperationalError:
                    time.sleep(0.02)
            return False
        ports = tcp_ports(pid)
        if not ports:
            return True
        assert self.admin is not None
        for _ in range(5):
            with self.admin.connect() as conn:
                if self.config.backend == "postgres":
                    rows = conn.exec_driver_sql(
                        "SELECT client_port, state, xact_start IS NOT NULL"
                        " FROM pg_stat_activity WHERE datname = current_database()"
                    ).all()
                    busy = [r for r in rows if r[0] in ports and (r[1] != "idle" or r[2])]
                else:
                    rows = conn.exec_driver_sql(
                        "SELECT p.host, p.command, t.trx_id FROM information_schema.processlist p"
                        " LEFT JOIN information_schema.innodb_trx t"
                        " ON t.trx_mysql_thread_id = p.id"
                    ).all()
                    busy = [
                        r
                        for r in rows
                        if _port_of(r[0]) in ports and (r[1] != "Sleep" or r[2] is not None)
                    ]
            if not busy:
                return True
            time.sleep(0.03)  # a statement sent just before the stop is still finishing
        return False

    # -- faults ------------------------------------------------------------------------

    def _pick(self, candidates: list[_Worker]) -> _Worker | None:
        if not candidates:
            return None
        busy = [w for w in candidates if self.holding.get(w.pid)]
        if busy and self.rng.random() < 0.8:
            return self.rng.choice(busy)
        return self.rng.choice(candidates)

    def _regular(self) -> list[_Worker]:
        return [w for w in self.workers if w.alive and not w.victim]

    def _working(self) -> list[_Worker]:
        """The regular workers that are ready and not frozen: the targets of faults."""
        return [w for w in self._regular() if w.pid in self.ready and w.frozen_at is None]

    def _fault_kill(self) -> bool:
        working = self._working()
        if len(working) < 2:
            return False  # someone must be left to take the runs over
        worker = self._pick(working)
        if worker is None:
            return False
        busy = "busy" if self.holding.get(worker.pid) else "idle"
        frozen = " frozen" if worker.frozen_at is not None else ""
        self._kill(worker, note=f"{worker.label} {busy}{frozen}")
        return True

    def _fault_freeze(self) -> bool:
        working = self._working()
        if len(working) < 2:
            return False  # someone must be left to take the runs over
        worker = self._pick(working)
        if worker is None:
            return False
        for _ in range(10):
            t0 = time.time()
            try:
                os.kill(worker.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return False
            deadline = time.monotonic() + 1.0
            while not _process_stopped(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.002)
            try:
                outside = self._outside_transaction(worker.pid)
            except (sa.exc.DBAPIError, OSError) as exc:
                self._fault_log.write(f"{time.time():.6f} freeze-check-error {exc!r}\n")
                outside = False
            if outside:
                worker.frozen_at = t0
                pause = self.config.settings.stale + self.rng.uniform(0.5, 1.5)
                worker.thaw_due = time.monotonic() + pause
                busy = "busy" if self.holding.get(worker.pid) else "idle"
                self._fault_log.write(f"{t0:.6f} frozen {worker.label} {busy} for {pause:.2f}\n")
                return True
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGCONT)
            self._record(Fault("freeze-probe", t0, time.time(), worker.pid, note="in a txn"))
            time.sleep(self.rng.uniform(0.01, 0.05))
        return False

    def _fault_connkill(self) -> bool:
        if not self.server:
            return False
        worker = self._pick(self._working())
        if worker is None:
            return False
        ports = tcp_ports(worker.pid)
        if not ports:
            return False
        assert self.admin is not None
        t0 = time.time()
        killed = 0
        try:
            with self.admin.connect() as conn:
                if self.config.backend == "postgres":
                    rows = conn.exec_driver_sql(
                        "SELECT pid, client_port FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).all()
                    for backend, port in rows:
                        if port in ports:
                            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")
                            killed += 1
                else:
                    rows = conn.exec_driver_sql(
                        "SELECT id, host FROM information_schema.processlist"
                        " WHERE id <> CONNECTION_ID()"
                    ).all()
                    for session, host in rows:
                        if _port_of(host) in ports:
                            with contextlib.suppress(sa.exc.DBAPIError):
                                conn.exec_driver_sql(f"KILL CONNECTION {int(session)}")
                                killed += 1
        except sa.exc.DBAPIError as exc:
            self._fault_log.write(f"{time.time():.6f} connkill-error {exc!r}\n")
        t1 = time.time()
        if not killed:
            return False
        self._record(Fault("connkill", t0, t1, worker.pid, note=f"{worker.label} {killed}"))
        return True

    def _fault_cancel(self) -> bool:
        assert self.app is not None
        held = sorted({r for runs in self.holding.values() for r in runs} - set(self.retries))
        if not held:
            return False
        run_id = self.rng.choice(held)
        app = self.app
        t0 = time.time()
        try:
            ok, _ = self._safely(lambda: app.cancel(run_id))
        except InvalidRunStateError:
            return False  # it ended in the meantime
        t1 = time.time()
        if not ok and not self._is_cancelled(run_id):
            return False
        self._record(Fault("cancel", t0, t1, run=run_id))
        self.retries[run_id] = time.monotonic() + self.rng.uniform(0.6, 1.2)
        return True

    def _is_cancelled(self, run_id: str) -> bool:
        app = self.app
        assert app is not None
        _, run = self._safely(lambda: app.get_run(run_id))
        return run is not None and run.status == "cancelled"

    def _retry(self, run_id: str) -> bool:
        """Retry a cancelled run; False when the database is away (try again later)."""
        app = self.app
        assert app is not None
        ok, run = self._safely(lambda: app.get_run(run_id))
        if not ok:
            return False
        if run is None or run.status != "cancelled":
            self.early.append(
                Violation(
                    "D-cancel-overwritten",
                    run_id,
                    "",
                    "cancel() had returned, and the run was "
                    f"{run.status if run else 'gone'} when its retry was due",
                )
            )
            return True
        t0 = time.time()
        try:
            ok, _ = self._safely(lambda: app.retry(run_id))
        except InvalidRunStateError as exc:
            self.early.append(Violation("D-cancel-overwritten", run_id, "", f"retry: {exc}"))
            return True
        if ok:
            self._record(Fault("retry", t0, time.time(), run=run_id))
        return ok

    def _fault_migrate_kill(self) -> bool:
        if any(w.victim and w.proc.poll() is None for w in self.workers):
            return False  # one at a time: each costs a process start
        # the no-op migrate() of an existing schema takes 5-30 ms in a new process
        self._spawn(die_in_migrate=self.rng.uniform(0.0, 0.015))
        return True

    def _pg_restart(self) -> None:
        """Stop the local PostgreSQL for 0.5..2 s and start it again (disturbs everyone)."""
        host = sa.engine.make_url(self.config.url).host
        clusters = Path("/etc/postgresql")
        if host not in ("127.0.0.1", "localhost") or not clusters.is_dir():
            raise RuntimeError(f"cannot restart PostgreSQL at {host}: no local cluster")
        version = sorted(p.name for p in clusters.iterdir())[-1]
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        t0 = time.time()
        subprocess.run([*ctl, "stop"], check=True, capture_output=True, timeout=120)
        try:
            time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            deadline = time.monotonic() + 120
            while (
                subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode != 0
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not come back within 120 s")
                subprocess.run([*ctl, "start"], check=False, capture_output=True, timeout=120)
                time.sleep(0.2)
        self._record(Fault("pg-restart", t0, time.time()))
        self._restarted = True

    def _inject(self) -> None:
        weights = dict(self.config.weights)
        if not self.server:
            weights.pop("connkill", None)
        actions: dict[str, Callable[[], bool]] = {
            "kill": self._fault_kill,
            "freeze": self._fault_freeze,
            "connkill": self._fault_connkill,
            "cancel": self._fault_cancel,
            "migrate-kill": self._fault_migrate_kill,
        }
        kinds = [k for k, w in weights.items() if w > 0 and k in actions]
        if not kinds:
            return
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        if actions[kind]():
            self.injected[kind] += 1
        else:
            # no fallback to another kind: the always-possible ones would crowd the mix
            self._fault_log.write(f"{time.time():.6f} no {kind} possible now\n")

    # -- the phases ----------------------------------------------------------------------

    def _tick(self, *, respawn: bool = True) -> None:
        self._tail()
        now = time.monotonic()
        for worker in list(self.workers):
            if not worker.alive:
                continue
            if worker.thaw_due is not None and now >= worker.thaw_due:
                self._thaw(worker)
        self._reap_victims()
        for run_id, due in list(self.retries.items()):
            if now >= due and self._retry(run_id):
                del self.retries[run_id]
        if respawn:
            while len(self._regular()) < self.config.workers:
                self._spawn()

    def _reap_victims(self) -> None:
        for worker in self.workers:
            if worker.victim and not worker.reaped and worker.proc.poll() is not None:
                worker.reaped = True
                if worker.proc.returncode == -signal.SIGKILL:
                    # it killed itself inside (or, if migrate() was quicker, just after) it
                    worker.killed_at = time.time()
                    self._record(
                        Fault("migrate-kill", worker.killed_at, worker.killed_at, worker.pid)
                    )

    def _trigger(self, count: int) -> None:
        assert self.app is not None
        handle = self.app.jobs[JOB_NAME]
        for _ in range(count):
            if len(self.triggered) >= self.config.max_runs:
                return
            payload = CampaignInput(seed=self.rng.randrange(1, 10**9), steps=self.config.steps)
            _, run = self._safely(lambda p=payload: handle.trigger(p))  # type: ignore[misc]
            if run is not None:
                self.triggered.add(run.id)

    def _prepare_database(self) -> None:
        cfg = self.config
        sys.path.insert(0, str(HERE.parent))
        from _backends import drop_schema, empty_tables

        if self.server:
            if cfg.fresh_schema:
                drop_schema(cfg.url)
            else:
                restore_schema(cfg.url)
                empty_tables(cfg.url)
            self.admin = sa.create_engine(cfg.url, pool_pre_ping=True)
        if cfg.fresh_schema:
            # the first, real migration of the schema, with its worker killed inside it
            window = {"sqlite": 0.03, "postgres": 0.3, "mysql": 0.6}[cfg.backend]
            victim = self._spawn(die_in_migrate=self.rng.uniform(0.0, window))
            self.injected["migrate-kill"] += 1
            try:
                victim.proc.wait(60)
            except subprocess.TimeoutExpired:
                self._kill(victim, kind="migrate-kill", note=f"{victim.label} never migrated")
            self._tick(respawn=False)
        s = cfg.settings
        self.app = create_durably(
            cfg.url,
            polling_interval=s.polling,
            heartbeat_interval=s.heartbeat,
            stale_threshold=s.stale,
        )
        try:
            self.app.migrate()
        except MigrationError as exc:
            self.early.append(
                Violation(
                    "M-migrate-after-kill",
                    "-",
                    "",
                    "migrate() fails for good after a worker was killed inside the first "
                    f"migration: {str(exc).splitlines()[0][:300]}",
                )
            )
            # start again from nothing, so that the rest of the campaign can run
            drop_schema(cfg.url)
            self.app.migrate()
        self.app.register({JOB_NAME: campaign_job})
        for _ in range(cfg.workers):
            self._spawn()

    def _fault_phase(self) -> None:
        cfg = self.config
        # faults aimed at workers that are still importing would be wasted (a loaded
        # machine takes seconds to start one): begin once they are up
        deadline = time.monotonic() + 120
        while len(self._working()) < cfg.workers and time.monotonic() < deadline:
            self._tick()
            time.sleep(0.05)
        started = time.monotonic()
        self._trigger(cfg.initial_runs)
        next_trigger = started + cfg.trigger_every
        next_fault = started + self.rng.uniform(*cfg.fault_gap)
        limit = cfg.duration if cfg.duration is not None else 3600.0
        while True:
            now = time.monotonic()
            total = sum(self.injected.values())
            if cfg.faults is not None and total >= cfg.faults:
                break
            if now - started >= limit:
                break
            self._tick()
            if now >= next_trigger:
                self._trigger(self.rng.choice([1, 1, 2]))
                next_trigger = now + cfg.trigger_every
            if now >= next_fault:
                restart_due = (
                    cfg.pg_restart
                    and cfg.backend == "postgres"
                    and not self._restarted
                    and (
                        total >= 0.6 * cfg.faults
                        if cfg.faults is not None
                        else now - started >= 0.6 * limit
                    )
                )
                if restart_due:
                    self._pg_restart()
                    self.injected["pg-restart"] += 1
                else:
                    self._inject()
                next_fault = time.monotonic() + self.rng.uniform(*cfg.fault_gap)
            time.sleep(0.02)

    def _drain(self) -> None:
        app = self.app
        assert app is not None
        for worker in self.workers:
            self._thaw(worker)
        for run_id in list(self.retries):
            self.retries[run_id] = 0.0
        deadline = time.monotonic() + self.config.drain_timeout
        while True:
            self._tick()
            ok, unfinished = self._safely(lambda: app.get_runs(status=UNFINISHED, limit=1))
            if ok and not unfinished and not self.retries:
                return
            if time.monotonic() > deadline:
                _, runs = self._safely(lambda: app.get_runs(status=UNFINISHED))
                self.stuck = [(r.id, r.status) for r in runs or []]
                return
            time.sleep(0.1)

    def _shutdown(self) -> None:
        self.stop_file.touch()
        for worker in self.workers:
            self._thaw(worker)
        deadline = time.monotonic() + self.config.stop_timeout
        for worker in self.workers:
            if not worker.alive:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.early.append(
                    Violation(
                        "W-stop-hang",
                        "-",
                        "",
                        f"{worker.label} (pid {worker.pid}) still running "
                        f"{self.config.stop_timeout} s after the stop file appeared",
                    )
                )
                worker.killed_at = time.time()
                worker.proc.kill()
                worker.proc.wait(10)
        self._reap_victims()
        for worker in self.workers:
            worker.log_file.close()
        self._fault_log.close()

    def _collect(self) -> Evidence:
        assert self.app is not None
        runs = []
        for run in self.app.get_runs():
            steps = [(s.name, s.status, s.output) for s in self.app.get_steps(run.id)]
            runs.append(RunState(run.id, run.status, run.payload, run.output, run.error, steps))
        text = self.side_path.read_text(encoding="utf-8") if self.side_path.exists() else ""
        lines, bad = parse_lines(text)
        workers = [
            WorkerInfo(
                w.label,
                w.pid,
                w.mode,
                w.victim,
                w.killed_at,
                w.proc.returncode,
                w.log_path.read_text(encoding="utf-8", errors="replace")[-2000:],
            )
            for w in self.workers
        ]
        return Evidence(
            self.config.settings.stale,
            lines,
            bad,
            self.faults,
            workers,
            runs,
            set(self.triggered),
            self.stuck,
            self.early,
        )

    def run(self) -> CampaignResult:
        began = time.monotonic()
        try:
            self._prepare_database()
            self._fault_phase()
            self._drain()
        finally:
            self._shutdown()
        try:
            evidence = self._collect()
        finally:
            if self.app is not None:
                self.app.close()
            if self.admin is not None:
                self.admin.dispose()
        wall = time.monotonic() - began
        save_evidence(evidence, self.dir / "evidence.json")
        meta = {"backend": self.config.backend, "seed": self.config.seed, "wall": wall}
        (self.dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        violations, stats = check(evidence)
        return CampaignResult(self.config, violations, stats, wall)

    def close(self) -> None:
        """Kill whatever is left (after an error in the controller)."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGCONT)
                worker.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(10)


def _port_of(host: Any) -> int | None:
    text = str(host or "")
    if ":" not in text:
        return None
    try:
        return int(text.rsplit(":", 1)[1])
    except ValueError:
        return None


def backend_url(backend: str, workdir: Path) -> str:
    """The database of a campaign: a file in `workdir`, or the test server of `backend`."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'campaign.db'}"
    sys.path.insert(0, str(HERE.parent))
    from _backends import SERVER_URLS

    return SERVER_URLS[backend]


def recheck(workdir: Path) -> CampaignResult:
    """Check the rules again on the evidence a campaign left in `workdir`."""
    meta = json.loads((workdir / "meta.json").read_text(encoding="utf-8"))
    config = CampaignConfig(backend=meta["backend"], url="", workdir=workdir, seed=meta["seed"])
    violations, stats = check(load_evidence(workdir / "evidence.json"))
    return CampaignResult(config, violations, stats, meta["wall"])


def run_campaign(config: CampaignConfig) -> CampaignResult:
    campaign = Campaign(config)
    try:
        return campaign.run()
    finally:
        campaign.close()


def restore_schema(url: str) -> None:
    """Migrate a database (idempotent)."""
    with create_durably(url) as d:
        d.migrate()


def reset_schema(url: str) -> None:
    """Drop durably's tables and migrate again: whatever a campaign left, the schema the
    rest of a test session expects."""
    sys.path.insert(0, str(HERE.parent))
    from _backends import drop_schema

    drop_schema(url)
    restore_schema(url)


def reproduce_command(
    backend: str, seed: int, faults: int | None, seconds: float | None = None
) -> str:
    args = f"--backends {backend} --seed {seed}"
    if seconds is not None:
        args += f" --seconds {seconds:g}"
    elif faults is not None:
        args += f" --faults {faults}"
    return f"python benchmarks/fault_campaign.py {args}"


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def figures(results: Iterable[CampaignResult]) -> str:
    """One table line per backend, for the long campaign."""
    rows = [
        "backend   seed        faults (by kind)                                              runs  "
        "steps  again  lost  stuck  holders  wall s  violations"
    ]
    for r in results:
        s = r.stats
        faults = ", ".join(f"{k} {v}" for k, v in s["faults"].items())
        rows.append(
            f"{r.config.backend:<9} {r.config.seed:<11} {faults:<61} {s['runs']:>5} "
            f"{s['steps_committed']:>6} {s['committed_steps_executed_again']:>6} "
            f"{s['lost_runs']:>5} {s['stuck_runs']:>6} {s['max_holders']:>8} "
            f"{r.wall:>7.1f}  {dict(sorted(r.by_rule().items())) or 'none'}"
        )
    return "\n".join(rows)
