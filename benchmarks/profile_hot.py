"""Profile durably's hot paths with pyinstrument: the step-overhead and throughput workloads.

    /tmp/bench-venv/bin/python benchmarks/profile_hot.py [--steps 5000] [--runs 1500] [--out DIR]

Writes steps.txt and drain.txt (call trees, wall clock) to --out (default: a temp dir)
and prints where they are. Findings from these profiles: /work/briefs/bench-findings.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sys_durably  # noqa: E402
from pyinstrument import Profiler  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=1_500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="durably-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with sys_durably._open(f"sqlite:///{tmp}/steps.db") as d:
            d.jobs.many.trigger({"n": args.steps})
            profiler = Profiler(interval=0.0005)
            with profiler:
                d.process_one()
            (out / "steps.txt").write_text(profiler.output_text(unicode=False, color=False))
        with sys_durably._open(f"sqlite:///{tmp}/drain.db") as d:
            d.jobs.three.batch_trigger([{"i": i} for i in range(args.runs)])
            profiler = Profiler(interval=0.0005)
            with profiler:
                d.process_until_idle()
            (out / "drain.txt").write_text(profiler.output_text(unicode=False, color=False))
    print(f"profiles written to {out}/steps.txt and {out}/drain.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
