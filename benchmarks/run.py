"""durably beside DBOS and Huey: every workload of the benchmarks issue, one table.

    /tmp/bench-venv/bin/python benchmarks/run.py --quick        # smoke run, well under a minute
    /tmp/bench-venv/bin/python benchmarks/run.py --reps 3       # the full sizes

Each measurement runs in a fresh process (benchmarks/cell.py) on a fresh database; the
table shows the median over --reps repetitions and durably's advantage over each peer
(how many times faster: >1 means durably is ahead). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

FULL = {
    "steps": 10_000,
    "runs": 2_000,
    "pg_runs": 500,
    "latency": 200,
    "enqueue": 10_000,
    "history": [1_000, 1_000_000],
    "scale_samples": 200,
    "rss": 100_000,
    "floor": 10_000,
    "recovery_steps": 20,
}
QUICK = {
    "steps": 1_000,
    "runs": 200,
    "pg_runs": 50,
    "latency": 20,
    "enqueue": 500,
    "history": [1_000, 20_000],
    "scale_samples": 50,
    "rss": 3_000,
    "floor": 2_000,
    "recovery_steps": 12,
}
WORKLOADS = {
    "1": "step overhead",
    "2": "throughput",
    "3": "trigger-to-start latency",
    "4": "enqueue rate",
    "5": "recovery",
    "6": "scale",
    "7": "floor",
}
GAP = (0.005, 0.045)  # random gap between triggers, seconds (uniform)
XPROC_POLL = 0.1  # polling interval of every cross-process latency cell without NOTIFY
SLOTS = 4
PROCS = 2


@dataclass
class Row:
    workload: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def median(self, system: str) -> float | None:
        vals = self.values.get(system)
        return statistics.median(vals) if vals else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = dict(QUICK if args.quick else FULL)
        if args.scale != 1.0:
            for key, value in self.sizes.items():
                if key == "history":
                    self.sizes[key] = [max(100, int(v * args.scale)) for v in value]
                elif key != "recovery_steps":
                    self.sizes[key] = max(10, int(value * args.scale))
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}
        self.log = open(args.log, "w")  # noqa: SIM115

    # -- running cells -----------------------------------------------------------------

    def cell(self, module: str, function: str, **kwargs: Any) -> dict[str, Any]:
        cmd = [sys.executable, str(HERE / "cell.py"), module, function, json.dumps(kwargs)]
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=self.args.cell_timeout, cwd=HERE
        )
        self.log.write(f"$ {module}.{function} {kwargs} ({time.perf_counter() - started:.1f} s)\n")
        self.log.write(proc.stdout[-2000:] + proc.stderr[-4000:] + "\n")
        self.log.flush()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{module}.{function} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1])

    def row(self, workload: str, label: str, unit: str, higher: bool) -> Row:
        row = Row(workload, label, unit, higher)
        self.rows.append(row)
        return row

    def repeat(
        self,
        row: Row,
        system: str,
        make: Callable[[Path], tuple[str, str, dict[str, Any]]],
        key: str,
        reps: int | None = None,
    ) -> None:
        """Run a cell `reps` times, each on a fresh database in a fresh temp dir."""
        if system not in self.args.systems and system != "sqlite3":
            return
        for _ in range(reps or self.args.reps):
            with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
                module, function, kwargs = make(Path(tmp))
                result = self.cell(module, function, **kwargs)
            row.values.setdefault(system, []).append(result[key])
        print(f"  {row.label:<58} {system:<8} {row.median(system):>12,.2f} {row.unit}", flush=True)

    def pg(self, name: str) -> str:
        return common.reset_pg_database(name)

    # -- workloads ---------------------------------------------------------------------

    def w1_steps(self, sync: str) -> None:
        n = self.sizes["steps"]
        row = self.row("1", f"step overhead, one run of {n:,} steps [{sync}]", "µs/step", False)
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "steps", {"url": durl(t, sync), "n": n}),
            "us_per_step",
        )
        self.repeat(
            row,
            "dbos",
            lambda t: (
                "sys_dbos",
                "steps",
                {"db": str(t / "dbos.db"), "synchronous": sync, "n": n},
            ),
            "us_per_step",
        )
        row.notes["huey"] = "no steps"

    def w2_throughput(self, sync: str) -> None:
        n = self.sizes["runs"]
        row = self.row("2", f"3-step runs/s, {n:,} runs, 1 worker, drain [{sync}]", "runs/s", True)
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "drain", {"url": durl(t, sync), "n": n}),
            "runs_s",
        )
        self.repeat(
            row,
            "huey",
            lambda t: ("sys_huey", "drain", {"path": str(t / "h.db"), "synchronous": sync, "n": n}),
            "runs_s",
        )
        row.notes["dbos"] = "see trigger+run row"
        row = self.row(
            "2", f"3-step runs/s, {n:,} runs, 1 worker, trigger+run [{sync}]", "runs/s", True
        )
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "end_to_end", {"url": durl(t, sync), "n": n}),
            "runs_s",
        )
        self.repeat(
            row,
            "dbos",
            lambda t: (
                "sys_dbos",
                "end_to_end",
                {"db": str(t / "d.db"), "synchronous": sync, "n": n},
            ),
            "runs_s",
        )
        self.repeat(
            row,
            "huey",
            lambda t: (
                "sys_huey",
                "end_to_end",
                {"path": str(t / "h.db"), "synchronous": sync, "n": n},
            ),
            "runs_s",
        )

    def w2_parallel(self, sync: str) -> None:
        n = self.sizes["runs"]
        row = self.row("2", f"3-step runs/s, {n:,} runs, {SLOTS} threads [{sync}]", "runs/s", True)
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "concurrent", {"url": durl(t, sync), "n": n, "slots": SLOTS}),
            "runs_s",
        )
        self.repeat(
            row,
            "dbos",
            lambda t: (
                "sys_dbos",
                "concurrent",
                {"db": str(t / "d.db"), "synchronous": sync, "n": n, "slots": SLOTS},
            ),
            "runs_s",
        )
        self.repeat(
            row,
            "huey",
            lambda t: (
                "sys_huey",
                "concurrent",
                {"path": str(t / "h.db"), "synchronous": sync, "n": n, "slots": SLOTS},
            ),
            "runs_s",
        )
        row.notes["durably"] = f"max_concurrent_runs={SLOTS}"
        row = self.row(
            "2", f"3-step runs/s, {n:,} runs, {PROCS} worker processes [{sync}]", "runs/s", True
        )
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "processes", {"url": durl(t, sync), "n": n, "procs": PROCS}),
            "runs_s",
        )
        self.repeat(
            row,
            "huey",
            lambda t: (
                "sys_huey",
                "processes",
                {"path": str(t / "h.db"), "synchronous": sync, "n": n, "procs": PROCS},
            ),
            "runs_s",
        )
        row.notes["dbos"] = "direct calls share no work"

    def w2_postgres(self) -> None:
        n = self.sizes["pg_runs"]
        row = self.row("2", f"PostgreSQL: 3-step runs/s, {n:,} runs, trigger+run", "runs/s", True)
        self.repeat(
            row,
            "durably",
            lambda t: (
                "sys_durably",
                "end_to_end",
                {"url": pgurl(self.pg("durably_bench")), "n": n},
            ),
            "runs_s",
        )
        self.repeat(
            row,
            "dbos",
            lambda t: (
                "sys_dbos",
                "end_to_end",
                {"db": self.pg("dbos_bench"), "synchronous": None, "n": n},
            ),
            "runs_s",
        )
        row = self.row("2", f"PostgreSQL: 3-step runs/s, {n:,} runs, drain", "runs/s", True)
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "drain", {"url": pgurl(self.pg("durably_bench")), "n": n}),
            "runs_s",
        )

    def w3_latency(self) -> None:
        n, (low, high) = self.sizes["latency"], GAP
        lat = {"n": n, "low": low, "high": high}
        rows = {
            pct: self.row("3", f"trigger-to-start {pct}, in-process [NORMAL]", "ms", False)
            for pct in ("p50", "p95")
        }
        self._latency(
            rows,
            "durably",
            lambda t: ("sys_durably", "latency_inproc", {"url": durl(t, "NORMAL"), **lat}),
        )
        self._latency(
            rows,
            "dbos",
            lambda t: (
                "sys_dbos",
                "latency_inproc",
                {"db": str(t / "d.db"), "synchronous": "NORMAL", **lat},
            ),
        )
        self._latency(
            rows,
            "huey",
            lambda t: (
                "sys_huey",
                "latency",
                {
                    "path": str(t / "h.db"),
                    "synchronous": "NORMAL",
                    "xproc": False,
                    "poll": XPROC_POLL,
                    **lat,
                },
            ),
        )
        rows["p50"].notes = {"dbos": "start_workflow", "huey": f"polls {XPROC_POLL} s"}
        rows = {
            pct: self.row(
                "3",
                f"trigger-to-start {pct}, other process, SQLite, poll {XPROC_POLL} s",
                "ms",
                False,
            )
            for pct in ("p50", "p95")
        }
        self._latency(
            rows,
            "durably",
            lambda t: (
                "sys_durably",
                "latency_xproc",
                {"url": durl(t, "NORMAL"), "polling_interval": XPROC_POLL, **lat},
            ),
        )
        self._latency(
            rows,
            "dbos",
            lambda t: (
                "sys_dbos",
                "latency_xproc",
                {
                    "db": str(t / "d.db"),
                    "synchronous": "NORMAL",
                    "polling_interval": XPROC_POLL,
                    **lat,
                },
            ),
        )
        self._latency(
            rows,
            "huey",
            lambda t: (
                "sys_huey",
                "latency",
                {
                    "path": str(t / "h.db"),
                    "synchronous": "NORMAL",
                    "xproc": True,
                    "poll": XPROC_POLL,
                    **lat,
                },
            ),
        )
        if self.args.no_pg:
            return
        rows = {
            pct: self.row("3", f"trigger-to-start {pct}, other process, PostgreSQL", "ms", False)
            for pct in ("p50", "p95")
        }
        self._latency(
            rows,
            "durably",
            lambda t: (
                "sys_durably",
                "latency_xproc",
                {"url": pgurl(self.pg("durably_bench")), "polling_interval": 1.0, **lat},
            ),
        )
        self._latency(
            rows,
            "dbos",
            lambda t: (
                "sys_dbos",
                "latency_xproc",
                {
                    "db": self.pg("dbos_bench"),
                    "synchronous": None,
                    "polling_interval": XPROC_POLL,
                    **lat,
                },
            ),
        )
        rows["p50"].notes = {
            "durably": "LISTEN/NOTIFY, poll 1 s",
            "dbos": f"queue polls {XPROC_POLL} s",
        }

    def _latency(self, rows: dict[str, Row], system: str, make: Any) -> None:
        if system not in self.args.systems:
            return
        for _ in range(self.args.reps_slow):
            with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
                module, function, kwargs = make(Path(tmp))
                result = self.cell(module, function, **kwargs)
            for pct, row in rows.items():
                row.values.setdefault(system, []).append(result[pct])
        for row in rows.values():
            print(f"  {row.label:<58} {system:<8} {row.median(system):>12,.2f} ms", flush=True)

    def w4_enqueue(self, sync: str) -> None:
        n = self.sizes["enqueue"]
        row = self.row("4", f"enqueue: {n:,} trigger() calls [{sync}]", "calls/s", True)
        batch = self.row("4", f"enqueue: one batch_trigger of {n:,} [{sync}]", "s", False)
        if "durably" in self.args.systems:
            for _ in range(self.args.reps_slow):
                with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
                    result = self.cell("sys_durably", "enqueue", url=durl(Path(tmp), sync), n=n)
                row.values.setdefault("durably", []).append(result["trigger_s"])
                batch.values.setdefault("durably", []).append(result["batch_s"])
            print(f"  {row.label:<58} durably  {row.median('durably'):>12,.0f}", flush=True)
            print(f"  {batch.label:<58} durably  {batch.median('durably'):>12,.3f}", flush=True)
        self.repeat(
            row,
            "dbos",
            lambda t: ("sys_dbos", "enqueue", {"db": str(t / "d.db"), "synchronous": sync, "n": n}),
            "trigger_s",
            self.args.reps_slow,
        )
        self.repeat(
            row,
            "huey",
            lambda t: (
                "sys_huey",
                "enqueue",
                {"path": str(t / "h.db"), "synchronous": sync, "n": n},
            ),
            "trigger_s",
            self.args.reps_slow,
        )
        row.notes["dbos"] = "DBOSClient.enqueue"
        batch.notes = {"dbos": "no batch API", "huey": "no batch API"}

    def w5_recovery(self) -> None:
        n = self.sizes["recovery_steps"]
        kw = {"n": n, "delay": 0.05, "kill_after": n // 4}
        row = self.row("5", "recovery: SIGKILL mid-run -> finished by a new process", "s", False)
        self.repeat(
            row,
            "durably",
            lambda t: ("sys_durably", "recovery", {"url": durl(t, "NORMAL"), **kw}),
            "recovery_s",
            self.args.reps_slow,
        )
        self.repeat(
            row,
            "dbos",
            lambda t: (
                "sys_dbos",
                "recovery",
                {"db": str(t / "d.db"), "synchronous": "NORMAL", **kw},
            ),
            "recovery_s",
            self.args.reps_slow,
        )
        row.notes = {
            "durably": "stale_threshold=2 s",
            "dbos": "recovers at launch",
            "huey": "task lost",
        }

    def w6_scale(self) -> None:
        samples = self.sizes["scale_samples"]
        claim: dict[int, float] = {}
        listing: dict[int, float] = {}
        for history in self.sizes["history"]:
            c = self.row("6", f"store.claim with {history:,} runs in the database", "ms", False)
            g = self.row("6", f"get_runs(limit=50) with {history:,} runs", "ms", False)
            reps = 1 if history > 100_000 else self.args.reps
            for _ in range(reps):
                with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
                    result = self.cell(
                        "sys_durably",
                        "scale",
                        path=str(Path(tmp) / "s.db"),
                        history=history,
                        samples=samples,
                    )
                c.values.setdefault("durably", []).append(result["claim_ms"])
                g.values.setdefault("durably", []).append(result["list_ms"])
                self.extra["plans"] = result["plans"]
            claim[history] = c.median("durably") or 0.0
            listing[history] = g.median("durably") or 0.0
            print(f"  {c.label:<58} durably  {claim[history]:>12,.3f} ms", flush=True)
            print(f"  {g.label:<58} durably  {listing[history]:>12,.3f} ms", flush=True)
            if reps == 1 and self.args.reps > 1:
                c.notes["durably"] = g.notes["durably"] = "1 rep"
        small, large = self.sizes["history"][0], self.sizes["history"][-1]
        self.extra["scale_growth"] = {
            "claim": claim[large] / claim[small],
            "list": listing[large] / listing[small],
        }
        n = self.sizes["rss"]
        first = self.row("6", f"worker RSS after {n // 10:,} runs", "MB", False)
        last = self.row("6", f"worker RSS after {n:,} runs", "MB", False)
        with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
            result = self.cell("sys_durably", "rss", url=durl(Path(tmp), "NORMAL"), n=n)
        first.values["durably"] = [result["rss_first_mb"]]
        last.values["durably"] = [result["rss_last_mb"]]
        last.notes["durably"] = f"peak {result['peak_mb']:.1f} MB, 1 rep"
        print(
            f"  {last.label:<58} durably  {result['rss_first_mb']:.1f} -> "
            f"{result['rss_last_mb']:.1f} MB",
            flush=True,
        )

    def w7_floor(self, sync: str) -> None:
        n = self.sizes["floor"]
        row = self.row("7", f"floor: bare sqlite3 insert+update+commit [{sync}]", "µs", False)
        self.repeat(
            row,
            "sqlite3",
            lambda t: (
                "sys_sqlite3",
                "floor",
                {"path": str(t / "f.db"), "synchronous": sync, "n": n},
            ),
            "us_per_step",
        )
        row.notes["durably"] = "bare sqlite3"

    # -- environment -------------------------------------------------------------------

    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f} at start",
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
            "versions": {
                p: version(p) for p in ("durably", "dbos", "huey", "sqlalchemy", "psycopg")
            },
        }
        settings = {}
        with tempfile.TemporaryDirectory(prefix="durably-bench-") as tmp:
            t = Path(tmp)
            for sync in self.args.syncs:
                settings[f"durably {sync}"] = self.cell(
                    "sys_durably", "settings", url=durl(t, sync)
                )
                if "dbos" in self.args.systems:
                    settings[f"dbos {sync}"] = self.cell(
                        "sys_dbos", "settings", db=str(t / f"d{sync}.db"), synchronous=sync
                    )
                if "huey" in self.args.systems:
                    settings[f"huey {sync}"] = self.cell(
                        "sys_huey", "settings", path=str(t / f"h{sync}.db"), synchronous=sync
                    )
        env["sqlite_settings"] = settings
        if not self.args.no_pg:
            env["postgresql"] = pg_settings()
        return env


def durl(tmp: Path, sync: str) -> str:
    """durably's URL: the default is `sqlite:///x.db` (NORMAL), strictest `?synchronous=FULL`."""
    base = f"sqlite:///{tmp / 'durably.db'}"
    return base if sync == "NORMAL" else f"{base}?synchronous={sync}"


def pgurl(libpq: str) -> str:
    return libpq.replace("postgresql://", "postgresql+psycopg://", 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def pg_settings() -> dict[str, str]:
    import psycopg

    url = common.ensure_pg_database("durably_bench")
    common.ensure_pg_database("dbos_bench")
    with psycopg.connect(url) as conn:
        out = {"server": str(conn.execute("SHOW server_version").fetchone()[0])}
        for name in ("fsync", "synchronous_commit", "wal_sync_method"):
            out[name] = str(conn.execute(f"SHOW {name}").fetchone()[0])
    return out


# -- the table ---------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit in ("ms", "s") and value < 10:
        return f"{value:,.3f}" if value < 1 else f"{value:,.2f}"
    if value < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def advantage(row: Row, peer: str) -> str:
    ours, theirs = row.median("durably"), row.median(peer)
    if ours is None or theirs is None or ours == 0 or theirs == 0:
        return ""
    ratio = ours / theirs if row.higher_is_better else theirs / ours
    return f"{ratio:.2f}x"


def table(bench: Bench) -> str:
    lines = [
        "| # | workload | unit | durably | DBOS | Huey | durably vs DBOS | durably vs Huey |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in bench.rows:
        cells = []
        for system in ("durably", "dbos", "huey"):
            value = row.median(
                system if system != "durably" or row.values.get("durably") else "sqlite3"
            )
            text = fmt(value, row.unit)
            note = row.notes.get(system)
            if note:
                text = f"{text} ({note})" if text else f"— ({note})"
            cells.append(text or "—")
        lines.append(
            f"| {row.workload} | {row.label} | {row.unit} | {' | '.join(cells)} | "
            f"{advantage(row, 'dbos') or '—'} | {advantage(row, 'huey') or '—'} |"
        )
    return "\n".join(lines)


def targets(bench: Bench) -> list[str]:
    """The issue's targets, checked against this run's medians."""
    by_label = {row.label: row for row in bench.rows}

    def find(prefix: str, system: str = "durably") -> float | None:
        for label, row in by_label.items():
            if label.startswith(prefix):
                return row.median(system)
        return None

    out = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("MET" if ok else "MISSED")
        out.append(f"- {mark}: {name}: {detail}")

    for sync in bench.args.syncs:
        step = find(f"step overhead, one run of {bench.sizes['steps']:,} steps [{sync}]")
        dbos = find(f"step overhead, one run of {bench.sizes['steps']:,} steps [{sync}]", "dbos")
        floor = find(f"floor: bare sqlite3 insert+update+commit [{sync}]", "sqlite3")
        if step and floor:
            check(
                f"step overhead within 3x of the floor [{sync}]",
                step <= 3 * floor,
                f"{step:.1f} µs vs floor {floor:.1f} µs = {step / floor:.2f}x",
            )
        if step and dbos:
            check(
                f"step overhead >= 10x faster than DBOS [{sync}]",
                dbos / step >= 10,
                f"{dbos / step:.1f}x",
            )
        n = bench.sizes["runs"]
        e2e = f"3-step runs/s, {n:,} runs, 1 worker, trigger+run [{sync}]"
        drain = f"3-step runs/s, {n:,} runs, 1 worker, drain [{sync}]"
        ours, dbos_tp = find(e2e), find(e2e, "dbos")
        if ours and dbos_tp:
            check(
                f"throughput >= 5x DBOS [{sync}]",
                ours / dbos_tp >= 5,
                f"{ours:.0f} vs {dbos_tp:.0f} runs/s = {ours / dbos_tp:.2f}x (trigger+run)",
            )
        ours, huey = find(drain), find(drain, "huey")
        if ours and huey:
            check(
                f"throughput >= 2x Huey's task throughput [{sync}]",
                ours / huey >= 2,
                f"{ours:.0f} vs {huey:.0f} runs/s = {ours / huey:.2f}x (drain)",
            )
        batch = find(f"enqueue: one batch_trigger of {bench.sizes['enqueue']:,} [{sync}]")
        if batch is not None:
            check(
                f"batch_trigger of {bench.sizes['enqueue']:,} < 0.5 s [{sync}]",
                batch < 0.5,
                f"{batch:.3f} s",
            )
    pg = f"PostgreSQL: 3-step runs/s, {bench.sizes['pg_runs']:,} runs, trigger+run"
    ours, dbos_tp = find(pg), find(pg, "dbos")
    if ours and dbos_tp:
        check(
            "PostgreSQL throughput >= 3x DBOS",
            ours / dbos_tp >= 3,
            f"{ours:.0f} vs {dbos_tp:.0f} runs/s = {ours / dbos_tp:.2f}x",
        )
    p50 = find("trigger-to-start p50, in-process")
    if p50 is not None:
        check("in-process trigger-to-start p50 < 2 ms", p50 < 2, f"{p50:.2f} ms")
    p50 = find("trigger-to-start p50, other process, PostgreSQL")
    if p50 is not None:
        check("cross-process PostgreSQL (LISTEN/NOTIFY) p50 < 20 ms", p50 < 20, f"{p50:.2f} ms")
    growth = bench.extra.get("scale_growth")
    if growth:
        small, large = bench.sizes["history"][0], bench.sizes["history"][-1]
        for what in ("claim", "list"):
            check(
                f"{what} at {large:,} runs within 2x of {small:,}",
                growth[what] <= 2,
                f"{growth[what]:.2f}x",
            )
    plans = bench.extra.get("plans")
    if plans:
        bad = [
            k
            for k, p in plans.items()
            if "SCAN" in p and "USING" not in p.split("SCAN", 1)[1] and "CONSTANT ROW" not in p
        ]
        check(
            "every hot query on an index (EXPLAIN QUERY PLAN)",
            not bad,
            "all on an index" if not bad else f"full scans: {', '.join(bad)}",
        )
    n = bench.sizes["rss"]
    first = find(f"worker RSS after {n // 10:,} runs")
    last = find(f"worker RSS after {n:,} runs")
    if first and last:
        check(
            f"worker RSS flat over {n:,} runs",
            last <= first * 1.1 + 5,
            f"{first:.1f} MB after {n // 10:,} runs, {last:.1f} MB after {n:,}",
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 rep: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--reps-slow",
        type=int,
        default=None,
        help="repetitions of the latency, enqueue and recovery cells (default: --reps)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size")
    parser.add_argument("--only", default="1,2,3,4,5,6,7", help="workloads, e.g. 1,2,7")
    parser.add_argument("--systems", default="durably,dbos,huey")
    parser.add_argument(
        "--syncs",
        default=None,
        help="SQLite synchronous settings (default NORMAL,FULL; quick NORMAL)",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL rows")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "durably-bench.log"))
    parser.add_argument("--cell-timeout", type=float, default=900.0)
    args = parser.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.reps_slow = args.reps_slow or args.reps
    args.systems = [s.strip() for s in args.systems.split(",")]
    syncs = args.syncs or ("NORMAL" if args.quick else "NORMAL,FULL")
    args.syncs = [s.strip().upper() for s in syncs.split(",")]
    if any(s not in ("NORMAL", "FULL", "OFF", "EXTRA") for s in args.syncs):
        parser.error(f"bad --syncs {syncs!r}: use NORMAL and/or FULL")
    only = {w.strip() for w in args.only.split(",")}
    unknown = only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    bench = Bench(args)
    started = time.perf_counter()
    env = bench.environment()
    print(f"sizes: {bench.sizes}; reps {args.reps}; cell log {args.log}", flush=True)
    steps: list[tuple[str, Callable[[], None]]] = []
    for sync in args.syncs:
        steps.append(("1", lambda sync=sync: bench.w1_steps(sync)))
    for sync in args.syncs:
        steps.append(("7", lambda sync=sync: bench.w7_floor(sync)))
    for sync in args.syncs:
        steps.append(("2", lambda sync=sync: bench.w2_throughput(sync)))
    steps.append(("2", lambda: bench.w2_parallel("NORMAL")))
    if not args.no_pg:
        steps.append(("2", bench.w2_postgres))
    steps.append(("3", bench.w3_latency))
    for sync in args.syncs:
        steps.append(("4", lambda sync=sync: bench.w4_enqueue(sync)))
    steps.append(("5", bench.w5_recovery))
    steps.append(("6", bench.w6_scale))
    for workload, step in steps:
        if workload not in only:
            continue
        try:
            step()
        except Exception as exc:  # a failed cell must not lose the figures taken so far
            print(f"workload {workload} failed: {exc}", file=sys.stderr, flush=True)
            bench.extra.setdefault("failures", []).append(f"workload {workload}: {exc}")
    elapsed = time.perf_counter() - started
    report = render(bench, env, args, elapsed)
    print("\n" + report)
    if args.out:
        args.out.write_text(report + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "env": env,
                    "sizes": bench.sizes,
                    "extra": bench.extra,
                    "rows": [row.__dict__ for row in bench.rows],
                },
                indent=1,
                default=str,
            )
        )
    return 0


def render(bench: Bench, env: dict[str, Any], args: argparse.Namespace, elapsed: float) -> str:
    parts = [
        f"Run {env['date']}; {env['machine']}; Python {env['python']}, SQLite {env['sqlite']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f". Medians of {args.reps} rep(s) ({args.reps_slow} for latency, enqueue and "
        f"recovery); whole run {elapsed / 60:.1f} min; command: `{' '.join(sys.argv)}`.",
        "",
        "Durability settings, read back from each system's own connections: "
        + "; ".join(
            f"{name}: journal_mode={s['journal_mode']}, synchronous={s['synchronous']}"
            for name, s in env["sqlite_settings"].items()
        )
        + ".",
    ]
    if "postgresql" in env:
        parts.append(
            "PostgreSQL (one server for both, databases durably_bench and dbos_bench): "
            + ", ".join(f"{k} {v}" for k, v in env["postgresql"].items())
            + "."
        )
    parts += [
        "",
        "[NORMAL] is durably's default URL `sqlite:///x.db`; [FULL] its strictest, "
        "`sqlite:///x.db?synchronous=FULL`; each peer runs at the same setting. "
        '"durably vs X" is how many times faster durably is (>1: durably ahead).',
        "",
        table(bench),
        "",
        "Targets of the benchmarks issue, checked on this run:",
        "",
        *targets(bench),
    ]
    for failure in bench.extra.get("failures", []):
        parts.append(f"- FAILED: {failure.splitlines()[0]}")
    plans = bench.extra.get("plans")
    if plans:
        parts += ["", "Query plans (SQLite EXPLAIN QUERY PLAN) of the store's statements:", ""]
        parts += [f"- `{k}`: {v or '(no table access)'}" for k, v in sorted(plans.items())]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
