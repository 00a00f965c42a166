"""The long fault campaign: many faults per backend, then the invariants and the figures.

    python benchmarks/fault_campaign.py --faults 200 --backends sqlite,postgres,mysql
    python benchmarks/fault_campaign.py --backends postgres --seed 7 --pg-restart

The campaign, its faults and its rules are those of the CI test (tests/crash/_campaign.py,
whose docstring states the rules); this script only runs it longer and prints, per
backend, the faults injected by kind, the runs, the steps committed, the committed steps
executed again, the lost and stuck runs, the most workers seen executing one run at once,
the wall time and the violations by rule. The server databases are those of the test
suite (DURABLY_TEST_POSTGRES_URL, DURABLY_TEST_MYSQL_URL); their durably tables are
dropped and recreated. `--pg-restart` stops and starts the local PostgreSQL once, which
disturbs everyone else using that server. Exit status 1 when a violation was found.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "crash"))
sys.path.insert(0, str(HERE.parent / "tests"))

import _campaign  # noqa: E402


def _flags(args: argparse.Namespace) -> str:
    """The options besides backend, seed and length that shaped this campaign."""
    flags = ""
    if args.kinds:
        flags += f" --kinds {args.kinds}"
    if args.keep_schema:
        flags += " --keep-schema"
    if args.workers != 3:
        flags += f" --workers {args.workers}"
    if args.pg_restart:
        flags += " --pg-restart"
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=200, help="faults per backend")
    parser.add_argument(
        "--seconds", type=float, help="stop injecting after this long instead (per backend)"
    )
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--seed", type=int, help="default: a random one, printed")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--kinds",
        help="only these fault kinds, comma-separated (default: all of "
        f"{','.join(_campaign.FAULT_WEIGHTS)})",
    )
    parser.add_argument(
        "--keep-schema",
        action="store_true",
        help="start on a migrated schema (no kill inside the first migration)",
    )
    parser.add_argument("--pg-restart", action="store_true")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--show", type=int, default=40, help="violations listed per backend")
    parser.add_argument(
        "--recheck",
        type=Path,
        metavar="DIR",
        help="run nothing: check the rules again on the evidence a campaign left in DIR",
    )
    args = parser.parse_args(argv)
    if args.recheck is not None:
        result = _campaign.recheck(args.recheck)
        print(result.summary(limit=args.show))
        return 0 if result.ok else 1

    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="durably-campaign-"))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    weights = dict(_campaign.FAULT_WEIGHTS)
    if args.kinds:
        kinds = {k.strip() for k in args.kinds.split(",")}
        unknown = kinds - set(weights)
        if unknown:
            parser.error(f"unknown fault kinds {sorted(unknown)}")
        weights = {k: w for k, w in weights.items() if k in kinds}
    results = []
    for backend in backends:
        workdir = root / backend
        _campaign.clear_dir(workdir)
        url = _campaign.backend_url(backend, workdir)
        config = _campaign.CampaignConfig(
            backend=backend,
            url=url,
            workdir=workdir,
            seed=seed,
            faults=None if args.seconds else args.faults,
            duration=args.seconds,
            workers=args.workers,
            fault_gap=(0.2, 0.8),
            weights=weights,
            fresh_schema=not args.keep_schema,
            pg_restart=args.pg_restart and backend == "postgres",
            drain_timeout=120.0,
        )
        print(f"== {backend}: seed {seed}, workdir {workdir}", flush=True)
        try:
            result = _campaign.run_campaign(config)
        finally:
            if backend != "sqlite":
                _campaign.reset_schema(url)
        print(result.summary(limit=args.show), flush=True)
        if not result.ok:
            replay = _campaign.reproduce_command(backend, seed, config.faults, args.seconds)
            print(f"  replay: {replay}{_flags(args)}")
        results.append(result)
    print()
    print(_campaign.figures(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
