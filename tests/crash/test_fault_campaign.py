"""A short randomized fault campaign per backend (the rules live in `_campaign.py`).

Each test runs worker processes on its backend for about 20 s while SIGKILLs, SIGSTOP/
SIGCONT freezes, killed database sessions, cancels and kills inside migrate() hit them,
then lets every run finish and checks that no committed step ran again, that no two
workers executed a run at once (beyond the step in flight when one froze or lost the
database), that no run was lost or stuck and that every output is right.

The seed is printed, and on failure so is the command that replays its fault plan:
`DURABLY_CAMPAIGN_SEED=<seed>` reruns the same plan here, and
`python benchmarks/fault_campaign.py --backends <b> --seed <seed>` runs it longer.
"""

from __future__ import annotations

import os
from pathlib import Path

import _campaign
import pytest
from _backends import SERVER_URLS, prepare_server

pytestmark = [pytest.mark.crash, pytest.mark.backends("sqlite", "postgres", "mysql")]

SEEDS = {"sqlite": 1001, "postgres": 2002, "mysql": 3003}
DURATION = float(os.environ.get("DURABLY_CAMPAIGN_SECONDS", "20"))


def test_fault_campaign_keeps_committed_steps_single_holder_and_every_run(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = _campaign.backend_url("sqlite", tmp_path)
    else:
        prepare_server(backend)
        url = SERVER_URLS[backend]
    seed = int(os.environ.get("DURABLY_CAMPAIGN_SEED", SEEDS[backend]))
    config = _campaign.CampaignConfig(
        backend=backend, url=url, workdir=tmp_path / "campaign", seed=seed, duration=DURATION
    )
    try:
        result = _campaign.run_campaign(config)
    finally:
        if backend != "sqlite":
            # leave the schema the rest of the session expects, whatever happened to it
            _campaign.reset_schema(url)
    print(result.summary())
    assert result.ok, (
        f"the fault campaign on {backend} (seed {seed}) found violations; replay with "
        f"DURABLY_CAMPAIGN_SEED={seed} DURABLY_TEST_BACKENDS={backend} or "
        f"{_campaign.reproduce_command(backend, seed, None, DURATION)}\n"
        f"{result.summary(limit=60)}"
    )
