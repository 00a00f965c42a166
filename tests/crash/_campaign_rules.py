"""The invariants of the fault campaign (`_campaign.py`), checked after it has drained.

What is checked comes from two sources: the database, read through a `Durably`
(`get_runs`, `get_steps`), and the side log that every worker appends to, together with
the controller's record of the faults it injected. The side log's format and the faults
are described in `_campaign.py`; here is what the rules make of them.

Definitions
-----------
S is the stale threshold. An execution X is a `start` line of a step function with the
`done` and `ack` lines of the same token. X.end is its done time, or, when its process
was killed inside the step, that process's last line. claim(X) is the last claim line of
X's process for X's run before X.start; pre(X) the last pre line of that process for X's
step before X.start (the job writes it just before `step.run`, so durably's boundary check
comes after it).

A process is *paused* while it is frozen (from SIGSTOP to its first line after SIGCONT)
or starved (a gap of more than STARVED seconds between two of its pulse lines, written
every PULSE seconds by a thread of its own, that no freeze explains: the machine did not
run it). E(c), for a claim line c of process q, is the earliest moment the claim behind
it can have committed: c - RESUME, or, when q was paused during [c - RESUME, c], RESUME
before that pause began (and so on, while pauses chain).

A claim line c_q of another process *supersedes* claim(X) (a claim line c_p of X's
process) when c_p < c_q, E(c_q) > c_p - S + RESUME and no retry of the run lies between
E(c_q) and c_p: then q's claim committed after p's.

X is *disturbed* (it may lose its claim in flight for a reason outside durably) when its
process was frozen during [X.start, X.end], or, during [X.start - S, X.end], its sessions
were killed, it reported a worker:error, the server was restarting or any worker was
starved, or when a cancel of its run was in progress during [X.start, X.end].

Rules (a violation names its rule)
-----------------------------------
A  committed steps never run again. For each completed step in the database, C is the
   execution whose token the stored output carries, and every execution with an ack line
   is committed too.
   A-rerun-after-commit: an execution of that step that started after the done time of a
   committed execution. (A commit happens after the step function returned, so this
   execution began after a result existed. The at-least-once reruns of a step whose
   result was never committed all start before it.)
   A-commit-overwritten: an acked execution whose result is not the stored one.
   A-unknown-commit: the stored token belongs to no execution.
B  one holder at a time.
   B-stale-start: X's process reached the boundary of X (pre(X)) after a claim line that
   supersedes claim(X): it started a step under a claim that had been superseded before
   it even reached the step boundary.
   B-zombie-commit: the same for an ack, with X.done in place of pre(X) (the commit of X
   began after X.done, and a superseded claim's writes are fenced).
   B-zombie-complete: the same for an end line, with its process's last line for the run
   before it.
   B-double-claim: two successive claim lines c1, c2 of a run with c2 - E(c1) < S/2 and
   no retry of the run between them (a run is reclaimed only once its heartbeat is S
   old).
   B-overlap: two executions of one run overlap in time (the later one started between
   the other's start and end) and the earlier one is not disturbed.
C  no run lost or stuck, outputs correct. C-lost: a triggered run is not in the database.
   C-stuck: a run still unfinished when the drain bound expired, or ended cancelled.
   C-failed: a run failed. C-output / C-steps: the output or a step's value is not the
   chain that `step_value` defines.
D  a cancel from another process is seen at the next step boundary. For a cancel [t0, t1]
   (the call and its return) and an execution X whose claim(X) is before t0:
   D-start-after-cancel: pre(X) after t1; D-commit-after-cancel: X acked with X.done after
   t1; D-complete-after-cancel: an end line under such a claim after t1;
   D-cancel-overwritten: the run was no longer `cancelled` when its retry was due.
M  migrations. M-migrate-after-kill: migrate() fails after a worker was killed inside the
   first migration (the campaign then drops the schema and goes on, so that the other
   rules are still checked).
W  workers. W-worker-exit: a worker the campaign did not kill exited with an error.
   W-stop-hang: a worker did not return from stop() within the bound.
H  harness self-checks (a failure here is a bug of the campaign, not of durably):
   H-no-claim / H-no-pre: an execution without its claim or pre line; H-bad-line.

Why a correct durably passes (the assumptions, stated once)
------------------------------------------------------------
- Two successive claims of one run commit at least S - RESUME apart (a run is reclaimed
  only once its heartbeat, set when it was claimed, is S old; a claim's transaction takes
  less than RESUME), unless a retry lies between them. The campaign uses no
  `stop(timeout)` and no SIGINT, the two other ways a run is released early.
- A process writes its claim line less than RESUME seconds of running time after the
  claim committed: so the commit lies after E(line). With the first point: if q's claim
  committed before p's, then E(c_q) <= commit_q <= commit_p - S + RESUME < c_p - S +
  RESUME; so a claim line that supersedes claim(X) by the definition above belongs to
  the newer claim, and X's process had lost its claim.
- A worker cannot stop the step function in flight when it loses its claim; so overlaps
  and reruns are allowed exactly for disturbed executions (B-overlap), and for steps
  whose result was never committed (A). What durably must not do is start a step, or
  commit one, under a claim that was superseded before the boundary (B-stale-start,
  B-zombie-*): a frozen or starved worker that comes back between steps has to notice
  that it has not confirmed its claim for S (durably's "two clocks" rule) before it starts
  the next step. A freeze between durably's boundary check and the step function's first
  line, a few microseconds, is the one window no implementation can close; the rule looks
  at pre(X), written before that check, so such a freeze does not count against durably.
  (This assumes durably measures the age of its confirmation from before the heartbeat
  was sent, as a conservative implementation does.)
- Wall times of all processes come from one host clock (CLOCK_REALTIME).
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

PULSE = 0.25  # seconds between two pulse lines of a worker
STARVED = 0.75  # a longer gap between pulses: the process was not run
RESUME = 0.5  # a running process writes its claim line within this long of the claim
_MODULUS = 2_147_483_647


def step_value(seed: int, index: int, previous: int) -> int:
    """The value of step `index`: it depends on the previous step's value, so a wrong
    replay changes every later value and the run's output."""
    return (previous * 1_000_003 + seed * 31 + index * 7 + 11) % _MODULUS


def expected_values(seed: int, steps: int) -> list[int]:
    values, previous = [], seed
    for index in range(steps):
        previous = step_value(seed, index, previous)
        values.append(previous)
    return values


def expected_output(seed: int, steps: int) -> dict[str, Any]:
    values = expected_values(seed, steps)
    return {"values": values, "total": sum(values)}


@dataclass(frozen=True)
class Line:
    t: float
    pid: int
    kind: str
    run: str
    step: str
    token: str
    extra: str


def parse_lines(text: str) -> tuple[list[Line], list[str]]:
    """The side log's lines sorted by time, and the lines that could not be read."""
    lines, bad = [], []
    for raw in text.splitlines():
        parts = raw.split(" ")
        if len(parts) != 7:
            bad.append(raw)
            continue
        try:
            lines.append(Line(float(parts[0]), int(parts[1]), *parts[2:]))
        except ValueError:
            bad.append(raw)
    lines.sort(key=lambda line: line.t)
    return lines, bad


@dataclass
class Fault:
    kind: str  # kill, freeze, freeze-probe, connkill, cancel, retry, migrate-kill, pg-restart
    t0: float  # wall time just before the action
    t1: float  # wall time just after it (a freeze: just after SIGCONT, or the kill)
    pid: int | None = None
    run: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Violation:
    rule: str
    run: str
    step: str
    detail: str

    def __str__(self) -> str:
        where = f"run {self.run}" + (f" step {self.step}" if self.step else "")
        return f"[{self.rule}] {where}: {self.detail}"


@dataclass
class WorkerInfo:
    label: str
    pid: int
    mode: str
    victim: bool
    killed_at: float | None = None
    returncode: int | None = None
    log_tail: str = ""


@dataclass
class RunState:
    id: str
    status: str
    payload: Any
    output: Any
    error: str | None
    steps: list[tuple[str, str, Any]]  # (name, status, output) in index order


@dataclass
class Evidence:
    """Everything the invariants are checked on."""

    stale: float
    lines: list[Line]
    bad_lines: list[str]
    faults: list[Fault]
    workers: list[WorkerInfo]
    runs: list[RunState]
    triggered: set[str]
    stuck: list[tuple[str, str]]  # (run id, status) still unfinished at the drain bound
    early: list[Violation] = field(default_factory=list)  # found while running


def save_evidence(ev: Evidence, path: Path) -> None:
    """Write `ev` as JSON, so that the rules can be checked again later (`load_evidence`)."""
    data = asdict(ev)
    data["triggered"] = sorted(ev.triggered)
    data["lines"] = [astuple(line) for line in ev.lines]
    path.write_text(json.dumps(data), encoding="utf-8")


def load_evidence(path: Path) -> Evidence:
    data = json.loads(path.read_text(encoding="utf-8"))
    return Evidence(
        stale=data["stale"],
        lines=[Line(*row) for row in data["lines"]],
        bad_lines=data["bad_lines"],
        faults=[Fault(**f) for f in data["faults"]],
        workers=[WorkerInfo(**w) for w in data["workers"]],
        runs=[RunState(**{**r, "steps": [tuple(s) for s in r["steps"]]}) for r in data["runs"]],
        triggered=set(data["triggered"]),
        stuck=[tuple(s) for s in data["stuck"]],
        early=[Violation(**v) for v in data["early"]],
    )


@dataclass
class Execution:
    token: str
    pid: int
    run: str
    step: str
    start: float
    done: float | None = None
    ack: float | None = None
    end: float = 0.0
    claim: float | None = None
    pre: float | None = None


def _intersects(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 <= b1 and b0 <= a1


def _last_before(times: Sequence[float], t: float) -> float | None:
    """The largest of the sorted `times` that is <= t."""
    best = None
    for value in times:
        if value > t:
            break
        best = value
    return best


class _Index:
    """The side log and the faults, indexed for the rules."""

    def __init__(self, ev: Evidence) -> None:
        self.stale = ev.stale
        self.times_of_pid: dict[int, list[float]] = defaultdict(list)
        self.claims: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.claims_of: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.pres: dict[tuple[int, str, str], list[float]] = defaultdict(list)
        self.lines_of: dict[tuple[int, str], list[Line]] = defaultdict(list)
        self.werrs: dict[int, list[float]] = defaultdict(list)
        self.pulses: dict[int, list[float]] = defaultdict(list)
        self.execs: dict[str, Execution] = {}
        for line in ev.lines:
            self.times_of_pid[line.pid].append(line.t)
            if line.run != "-":
                self.lines_of[(line.pid, line.run)].append(line)
            kind = line.kind
            if kind == "claim":
                self.claims[line.run].append((line.t, line.pid))
                self.claims_of[(line.pid, line.run)].append(line.t)
            elif kind == "pre":
                self.pres[(line.pid, line.run, line.step)].append(line.t)
            elif kind == "start":
                self.execs[line.token] = Execution(
                    line.token, line.pid, line.run, line.step, line.t
                )
            elif kind == "done" and line.token in self.execs:
                self.execs[line.token].done = line.t
            elif kind == "ack" and line.token in self.execs:
                self.execs[line.token].ack = line.t
            elif kind == "werr":
                self.werrs[line.pid].append(line.t)
            elif kind == "pulse":
                self.pulses[line.pid].append(line.t)

        self.freezes: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.connkills: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.outages: list[tuple[float, float]] = []
        self.cancels: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.retries: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for f in ev.faults:
            if f.kind in ("freeze", "freeze-probe") and f.pid is not None:
                # until the process is seen running again: SIGCONT sent is not resumed
                times = self.times_of_pid[f.pid]
                k = bisect.bisect_left(times, f.t1)
                self.freezes[f.pid].append((f.t0, times[k] if k < len(times) else f.t1))
            elif f.kind == "connkill" and f.pid is not None:
                self.connkills[f.pid].append((f.t0, f.t1))
            elif f.kind == "pg-restart":
                self.outages.append((f.t0, f.t1))
            elif f.kind == "cancel" and f.run is not None:
                self.cancels[f.run].append((f.t0, f.t1))
            elif f.kind == "retry" and f.run is not None:
                self.retries[f.run].append((f.t0, f.t1))

        self.starved: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for pid, beats in self.pulses.items():
            for a, b in itertools.pairwise(beats):
                if b - a > STARVED and not self.frozen_during(pid, a, b):
                    self.starved[pid].append((a, b))
        self.any_starved = sorted(gap for gaps in self.starved.values() for gap in gaps)

        self.by_step: dict[tuple[str, str], list[Execution]] = defaultdict(list)
        self.by_run: dict[str, list[Execution]] = defaultdict(list)
        for x in self.execs.values():
            times = self.times_of_pid[x.pid]
            x.end = x.done if x.done is not None else max(t for t in times if t >= x.start)
            x.claim = _last_before(self.claims_of[(x.pid, x.run)], x.start)
            x.pre = _last_before(self.pres[(x.pid, x.run, x.step)], x.start)
            self.by_step[(x.run, x.step)].append(x)
            self.by_run[x.run].append(x)
        for xs in self.by_run.values():
            xs.sort(key=lambda x: x.start)

    def frozen_during(self, pid: int, a: float, b: float) -> bool:
        return any(_intersects(f0, f1, a, b) for f0, f1 in self.freezes[pid])

    def earliest_commit(self, pid: int, t: float) -> float:
        """E(t): the earliest moment the claim behind `pid`'s claim line at `t` committed."""
        lo = t - RESUME
        pauses = self.freezes[pid] + self.starved[pid]
        moved = True
        while moved:
            moved = False
            for a, b in pauses:
                if a <= t and b >= lo and a - RESUME < lo:
                    lo, moved = a - RESUME, True
        return lo

    def retried_between(self, run: str, a: float, b: float) -> bool:
        return any(_intersects(r0, r1, a, b) for r0, r1 in self.retries[run])

    def superseded(self, pid: int, run: str, own_claim: float, before: float) -> float | None:
        """A claim line in (own_claim, before) that supersedes `pid`'s claim at own_claim."""
        for t, other in self.claims[run]:
            if other == pid or not own_claim < t < before:
                continue
            earliest = self.earliest_commit(other, t)
            if earliest <= own_claim - self.stale + RESUME:
                continue  # that claim may be the older one, its line written late
            if self.retried_between(run, earliest, own_claim):
                continue
            return t
        return None

    def disturbed(self, x: Execution) -> bool:
        lo = x.start - self.stale
        return (
            self.frozen_during(x.pid, x.start, x.end)
            or any(_intersects(k0, k1, lo, x.end) for k0, k1 in self.connkills[x.pid])
            or any(lo <= t <= x.end for t in self.werrs[x.pid])
            or any(_intersects(o0, o1, lo, x.end) for o0, o1 in self.outages)
            or any(_intersects(g0, g1, lo, x.end) for g0, g1 in self.any_starved)
            or any(_intersects(c0, c1, x.start, x.end) for c0, c1 in self.cancels[x.run])
        )


def _rule_a(ix: _Index, runs: list[RunState], out: list[Violation]) -> dict[str, int]:
    committed_steps = reruns_after_commit = allowed_reruns = 0
    for run in runs:
        for name, status, output in run.steps:
            if status != "completed":
                continue
            committed_steps += 1
            runs_of_step = ix.by_step.get((run.id, name), [])
            token = output.get("token") if isinstance(output, dict) else None
            stored = ix.execs.get(token) if isinstance(token, str) else None
            if stored is None:
                out.append(Violation("A-unknown-commit", run.id, name, f"stored {output!r}"))
                continue
            committed = [stored] + [x for x in runs_of_step if x.ack is not None]
            for x in committed[1:]:
                if x.token != stored.token:
                    out.append(
                        Violation(
                            "A-commit-overwritten",
                            run.id,
                            name,
                            f"execution {x.token} (pid {x.pid}) was acked at {x.ack:.6f} but "
                            f"the stored result is {stored.token}'s",
                        )
                    )
            first = min(committed, key=lambda x: x.done if x.done is not None else x.start)
            bound = first.done if first.done is not None else first.start
            for x in runs_of_step:
                if x.token == stored.token:
                    continue
                if x.start > bound:
                    reruns_after_commit += 1
                    out.append(
                        Violation(
                            "A-rerun-after-commit",
                            run.id,
                            name,
                            f"execution {x.token} (pid {x.pid}) started at {x.start:.6f}, "
                            f"{x.start - bound:.3f} s after execution {first.token} "
                            f"(pid {first.pid}) had finished it",
                        )
                    )
                elif x.ack is None:
                    allowed_reruns += 1
    return {
        "steps_committed": committed_steps,
        "committed_steps_executed_again": reruns_after_commit,
        "reruns_allowed": allowed_reruns,
    }


def _rule_b(ix: _Index, out: list[Violation]) -> int:
    """Rule B; returns the most processes seen executing one run at once."""
    max_holders = 0
    for x in ix.execs.values():
        if x.claim is None:
            out.append(Violation("H-no-claim", x.run, x.step, f"execution {x.token}"))
        if x.pre is None or (x.claim is not None and x.pre < x.claim):
            out.append(Violation("H-no-pre", x.run, x.step, f"execution {x.token}"))
    for run_id, xs in ix.by_run.items():
        for i, x in enumerate(xs):
            holders = {x.pid} | {y.pid for y in xs[:i] if y.start <= x.start < y.end}
            max_holders = max(max_holders, len(holders))
            for y in xs[i + 1 :]:
                if y.start >= x.end:
                    break
                if not ix.disturbed(x):
                    out.append(
                        Violation(
                            "B-overlap",
                            run_id,
                            y.step,
                            f"execution {y.token} (pid {y.pid}, step {y.step}) started at "
                            f"{y.start:.6f} while {x.token} (pid {x.pid}, step {x.step}) ran "
                            f"[{x.start:.6f}, {x.end:.6f}], and that process was neither "
                            "frozen, starved, cut off from the database nor cancelled",
                        )
                    )
            if x.claim is None:
                continue
            boundary = x.pre if x.pre is not None else x.start
            t = ix.superseded(x.pid, run_id, x.claim, boundary)
            if t is not None:
                out.append(
                    Violation(
                        "B-stale-start",
                        run_id,
                        x.step,
                        f"pid {x.pid} (claim at {x.claim:.6f}) reached the boundary at "
                        f"{boundary:.6f} and started execution {x.token}, "
                        f"{boundary - t:.3f} s after another worker had claimed the run "
                        f"(line at {t:.6f})",
                    )
                )
            if x.ack is not None and x.done is not None:
                t = ix.superseded(x.pid, run_id, x.claim, x.done)
                if t is not None:
                    out.append(
                        Violation(
                            "B-zombie-commit",
                            run_id,
                            x.step,
                            f"the result of execution {x.token} (pid {x.pid}) was committed "
                            f"although another worker had claimed the run at {t:.6f}",
                        )
                    )
    for (pid, run_id), run_lines in ix.lines_of.items():
        for k, line in enumerate(run_lines):
            if line.kind != "end":
                continue
            own = _last_before(ix.claims_of[(pid, run_id)], line.t)
            earlier = [p.t for p in run_lines[:k] if p.kind not in ("end", "claim")]
            if own is None or not earlier:
                continue
            t = ix.superseded(pid, run_id, own, max(earlier))
            if t is not None:
                out.append(
                    Violation(
                        "B-zombie-complete",
                        run_id,
                        "",
                        f"pid {pid} completed the run at {line.t:.6f} although another "
                        f"worker had claimed it at {t:.6f}",
                    )
                )
    for run_id, claims in ix.claims.items():
        for (t1, p1), (t2, p2) in itertools.pairwise(claims):
            earliest = ix.earliest_commit(p1, t1)
            if t2 - earliest >= ix.stale / 2 or ix.retried_between(run_id, earliest, t2):
                continue
            out.append(
                Violation(
                    "B-double-claim",
                    run_id,
                    "",
                    f"claimed by pid {p1} (line at {t1:.6f}) and again by pid {p2} "
                    f"{t2 - t1:.3f} s later, with no cancel and retry between",
                )
            )
    return max_holders


def _rule_d(ix: _Index, out: list[Violation]) -> None:
    for run_id, windows in ix.cancels.items():
        for t0, t1 in windows:
            for x in ix.by_run.get(run_id, []):
                if x.claim is None or x.claim >= t0:
                    continue
                if x.pre is not None and x.pre > t1:
                    out.append(
                        Violation(
                            "D-start-after-cancel",
                            run_id,
                            x.step,
                            f"pid {x.pid} started execution {x.token} at {x.start:.6f}, "
                            f"{x.pre - t1:.3f} s after cancel() returned",
                        )
                    )
                if x.ack is not None and x.done is not None and x.done > t1:
                    out.append(
                        Violation(
                            "D-commit-after-cancel",
                            run_id,
                            x.step,
                            f"execution {x.token} (pid {x.pid}) was committed after "
                            "cancel() returned",
                        )
                    )
            for (pid, rid), run_lines in ix.lines_of.items():
                if rid != run_id:
                    continue
                for line in run_lines:
                    own = _last_before(ix.claims_of[(pid, run_id)], line.t)
                    if line.kind == "end" and own is not None and own < t0 and line.t > t1:
                        out.append(
                            Violation(
                                "D-complete-after-cancel",
                                run_id,
                                "",
                                f"pid {pid} completed the run at {line.t:.6f}, after "
                                "cancel() returned, under its claim from before the cancel",
                            )
                        )


def _rule_c(ev: Evidence, out: list[Violation]) -> dict[str, int]:
    in_db = {run.id for run in ev.runs}
    lost = sorted(ev.triggered - in_db)
    for run_id in lost:
        out.append(Violation("C-lost", run_id, "", "triggered but not in the database"))
    stuck = {run_id for run_id, _ in ev.stuck}
    for run_id, status in ev.stuck:
        out.append(Violation("C-stuck", run_id, "", f"still {status} at the drain bound"))
    completed = 0
    for run in ev.runs:
        if run.status == "failed":
            out.append(Violation("C-failed", run.id, "", f"error {run.error!r}"))
            continue
        if run.status != "completed":
            if run.id not in stuck:
                out.append(Violation("C-stuck", run.id, "", f"ended {run.status}"))
            continue
        completed += 1
        seed, n = int(run.payload["seed"]), int(run.payload["steps"])
        if run.output != expected_output(seed, n):
            out.append(Violation("C-output", run.id, "", f"output {run.output!r}"))
        got = [
            (name, status, output.get("value") if isinstance(output, dict) else None)
            for name, status, output in run.steps
        ]
        wanted = [(f"s{i}", "completed", v) for i, v in enumerate(expected_values(seed, n))]
        if got != wanted:
            out.append(Violation("C-steps", run.id, "", f"steps {got!r}"))
    return {
        "runs": len(ev.runs),
        "runs_completed": completed,
        "lost_runs": len(lost),
        "stuck_runs": sum(1 for v in out if v.rule == "C-stuck"),
    }


def check(ev: Evidence) -> tuple[list[Violation], dict[str, Any]]:
    """Check the rules of the module docstring; returns the violations and the figures."""
    out: list[Violation] = list(ev.early)
    for raw in ev.bad_lines:
        out.append(Violation("H-bad-line", "-", "", repr(raw[:200])))
    ix = _Index(ev)
    stats: dict[str, Any] = _rule_a(ix, ev.runs, out)
    stats["max_holders"] = _rule_b(ix, out)
    _rule_d(ix, out)
    stats.update(_rule_c(ev, out))
    for w in ev.workers:
        if w.killed_at is None and w.returncode not in (0, None):
            out.append(
                Violation(
                    "W-worker-exit",
                    "-",
                    "",
                    f"{w.label} (pid {w.pid}) exited {w.returncode}: ...{w.log_tail[-600:]}",
                )
            )
    migrate_ended = {line.pid for line in ev.lines if line.kind == "migrate-end"}
    stats["migrate_kills_inside_migrate"] = sum(
        1 for f in ev.faults if f.kind == "migrate-kill" and f.pid not in migrate_ended
    )
    stats["executions"] = len(ix.execs)
    stats["workers_spawned"] = len(ev.workers)
    stats["starved_gaps"] = len(ix.any_starved)
    kinds = Counter(f.kind for f in ev.faults if f.kind not in ("freeze-probe", "retry"))
    stats["faults"] = dict(sorted(kinds.items()))
    return list(dict.fromkeys(out)), stats  # one cancel window may flag twice
