"""Dialect resolution by URL through pluggy: the built-in adapter, errors, third-party plugins.

The third-party plugins here are real: an in-process plugin registered with
`register_dialect_plugin`, and an installed-looking package announced through a real
`*.dist-info/entry_points.txt` on `PYTHONPATH`, loaded by a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

import durably
from durably import (
    DialectNotFoundError,
    DurablyError,
    StepContext,
    create_durably,
    define_job,
    installed_schemes,
    resolve_dialect,
)
from durably._dialect import KNOWN_SCHEMES, iter_plugins
from durably_dialects.sqlite3 import SqliteDialect


@define_job(name="greet")
def greet(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    name = step.run("load-name", lambda: payload["name"])
    text = step.run("greet", lambda: f"hello {name}")
    return {"text": text}


def run_greet_job(d: durably.Durably) -> str:
    """Migrate, trigger `greet`, process it in this thread; returns the run id."""
    d.migrate()
    handle = d.register({"greet": greet})["greet"]
    run = handle.trigger({"name": "ada"})
    assert d.process_until_idle() == 1
    return run.id


def stored_steps(db_file: Path, run_id: str) -> list[tuple[str, str]]:
    """(name, status) of a run's steps, read from the file with the stdlib driver."""
    with sqlite3.connect(db_file) as conn:
        return conn.execute(
            'SELECT name, status FROM durably_steps WHERE run_id = ? ORDER BY "index"',
            (run_id,),
        ).fetchall()


# -- the built-in sqlite3 adapter -----------------------------------------------------


def test_durably_distribution_declares_the_sqlite3_adapter_in_the_dialects_group() -> None:
    eps = importlib.metadata.distribution("durably").entry_points.select(group="durably.dialects")
    assert {ep.name: ep.value for ep in eps}["sqlite3"] == "durably_dialects.sqlite3:plugin"


def test_sqlite_adapter_is_registered_through_its_entry_point() -> None:
    (ep,) = importlib.metadata.distribution("durably").entry_points.select(
        group="durably.dialects", name="sqlite3"
    )
    registered = dict(iter_plugins())
    assert registered.get("sqlite3") is ep.load()
    assert "sqlite" in installed_schemes()


@pytest.mark.parametrize("url", ["sqlite:///x.db", "sqlite://"], ids=["file", "memory"])
def test_sqlite_urls_resolve_to_the_stdlib_sqlite3_adapter(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    dialect = resolve_dialect(url)
    try:
        assert type(dialect).__module__ == "durably_dialects.sqlite3"
        assert isinstance(dialect, durably.Dialect)
        assert dialect.url == url
    finally:
        dialect.close()


# -- URLs nobody answers --------------------------------------------------------------


def test_unknown_scheme_raises_dialect_not_found_naming_it_and_the_installed_schemes() -> None:
    with pytest.raises(DialectNotFoundError) as info:
        resolve_dialect("nosuchdb://host/db")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DurablyError)
    message = str(info.value)
    assert "'nosuchdb'" in message
    for scheme in installed_schemes():
        assert scheme in message
    assert "sqlite" in message
    # an unknown scheme belongs to no extra of ours: point at third-party plugins instead
    assert "durably[" not in message
    assert "durably.dialects" in message


def test_create_durably_with_an_unknown_scheme_raises_dialect_not_found() -> None:
    with pytest.raises(DialectNotFoundError, match="nosuchdb"):
        create_durably("nosuchdb://host/db")


# (URL, extra, driver modules): the URL works once the extra's driver is installed, and
# until then names the extra. When an adapter lands, nothing here needs to change.
BACKENDS = [
    ("libsql://example.turso.io?auth_token=s3cret", "libsql", ("libsql_client", "libsql")),
    ("postgresql+psycopg://app:s3cret@db.example/app", "postgres", ("psycopg",)),
    ("mysql+pymysql://app:s3cret@db.example/app", "mysql", ("pymysql",)),
]


def driver_installed(modules: tuple[str, ...]) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize(("url", "extra", "drivers"), BACKENDS, ids=[b[1] for b in BACKENDS])
def test_backend_url_resolves_with_its_driver_and_otherwise_names_the_extra_to_install(
    url: str, extra: str, drivers: tuple[str, ...]
) -> None:
    if driver_installed(drivers):
        dialect = resolve_dialect(url)  # resolving must not connect anywhere
        dialect.close()
        return
    with pytest.raises(DialectNotFoundError) as info:
        resolve_dialect(url)
    message = str(info.value)
    assert f"durably[{extra}]" in message
    assert "s3cret" not in message, "a password or token must not leak into the error"


def base_scheme_of(extra: str) -> str:
    return min(s for s, e in KNOWN_SCHEMES.items() if e == extra and "+" not in s)


@pytest.mark.parametrize("extra", sorted(set(KNOWN_SCHEMES.values())))
def test_unknown_driver_of_a_known_backend_names_the_backends_extra(extra: str) -> None:
    scheme = f"{base_scheme_of(extra)}+acmedriver"
    with pytest.raises(DialectNotFoundError) as info:
        resolve_dialect(f"{scheme}://app:s3cret@db.example/app")
    message = str(info.value)
    assert f"'{scheme}'" in message
    assert f"durably[{extra}]" in message
    assert "s3cret" not in message


def test_every_known_scheme_either_resolves_or_names_its_extra() -> None:
    for scheme, extra in KNOWN_SCHEMES.items():
        try:
            dialect = resolve_dialect(f"{scheme}://user:pw@host/db")
        except DialectNotFoundError as exc:
            assert f"durably[{extra}]" in str(exc), (scheme, str(exc))
        else:
            dialect.close()


# -- a third-party dialect, registered in-process -------------------------------------


class AcmeDialect:
    """A third-party Dialect for `acme:///path.db`, delegating to the stdlib adapter."""

    skip_locked = False

    def __init__(self, url: str) -> None:
        if not url.startswith("acme://"):
            raise ValueError(f"not an acme URL: {url!r}")
        self.url = url
        self._inner = SqliteDialect("sqlite://" + url[len("acme://") :])
        self.sqlalchemy_dialect = self._inner.sqlalchemy_dialect
        self.integrity_errors = self._inner.integrity_errors
        self.transactions = 0
        self.migrations = 0

    def transaction(self) -> AbstractContextManager[Any]:
        self.transactions += 1
        return self._inner.transaction()

    def read(self) -> AbstractContextManager[Any]:
        return self._inner.read()

    def migrate(self, migrator: durably.Migrator) -> None:
        self.migrations += 1
        self._inner.migrate(migrator)

    def close(self) -> None:
        self._inner.close()


class AcmePlugin:
    @durably.hookimpl
    def durably_dialect_for_url(self, url: str) -> AcmeDialect | None:
        return AcmeDialect(url) if url.startswith("acme://") else None

    @durably.hookimpl
    def durably_dialect_schemes(self) -> list[str]:
        return ["acme"]


@pytest.fixture
def acme_plugin() -> Iterator[AcmePlugin]:
    plugin = AcmePlugin()
    durably.register_dialect_plugin(plugin)
    try:
        yield plugin
    finally:
        durably.unregister_dialect_plugin(plugin)


def test_in_process_plugin_answers_its_scheme_and_runs_a_job_end_to_end(
    acme_plugin: AcmePlugin, tmp_path: Path
) -> None:
    db_file = tmp_path / "acme.db"
    assert "acme" in installed_schemes()
    with create_durably(f"acme:///{db_file}") as d:
        assert isinstance(d.dialect, AcmeDialect)
        run_id = run_greet_job(d)
        run = d.get_run(run_id)
        assert run is not None
        assert run.status == "completed"
        assert run.output == {"text": "hello ada"}
        assert [(s.name, s.output) for s in d.get_steps(run_id)] == [
            ("load-name", "ada"),
            ("greet", "hello ada"),
        ]
        assert d.dialect.migrations == 1
        assert d.dialect.transactions > 0
    assert stored_steps(db_file, run_id) == [("load-name", "completed"), ("greet", "completed")]


def test_in_process_plugin_leaves_other_schemes_to_the_built_in_adapters(
    acme_plugin: AcmePlugin,
) -> None:
    dialect = resolve_dialect("sqlite://")
    try:
        assert type(dialect).__module__ == "durably_dialects.sqlite3"
    finally:
        dialect.close()


def test_unregistered_plugin_no_longer_answers_its_scheme(tmp_path: Path) -> None:
    plugin = AcmePlugin()
    durably.register_dialect_plugin(plugin)
    durably.unregister_dialect_plugin(plugin)
    assert "acme" not in installed_schemes()
    with pytest.raises(DialectNotFoundError, match="'acme'"):
        resolve_dialect(f"acme:///{tmp_path / 'acme.db'}")


# -- create_durably with a Dialect instance -------------------------------------------


def test_create_durably_accepts_a_dialect_instance_without_any_plugin(tmp_path: Path) -> None:
    db_file = tmp_path / "direct.db"
    dialect = AcmeDialect(f"acme:///{db_file}")
    assert "acme" not in installed_schemes()
    with create_durably(dialect) as d:
        assert d.dialect is dialect
        run_id = run_greet_job(d)
        run = d.get_run(run_id)
        assert run is not None and run.status == "completed"
    assert stored_steps(db_file, run_id) == [("load-name", "completed"), ("greet", "completed")]


def test_create_durably_accepts_a_built_in_dialect_instance(tmp_path: Path) -> None:
    dialect = SqliteDialect(f"sqlite:///{tmp_path / 'builtin.db'}")
    with create_durably(dialect) as d:
        assert d.dialect is dialect
        run = d.get_run(run_greet_job(d))
        assert run is not None and run.status == "completed"


def test_create_durably_rejects_an_object_that_is_not_a_dialect() -> None:
    with pytest.raises(TypeError, match="transaction"):
        create_durably(object())  # type: ignore[arg-type]


# -- a third-party plugin installed as a distribution, loaded by entry point ----------

ACME_DIALECT_SOURCE = '''
"""acme_durably: a third-party durably dialect over the stdlib sqlite3 adapter."""
from durably_dialects.sqlite3 import SqliteDialect


class AcmeDialect:
    skip_locked = False

    def __init__(self, url):
        self.url = url
        self._inner = SqliteDialect("sqlite://" + url[len("acme://"):])
        self.sqlalchemy_dialect = self._inner.sqlalchemy_dialect
        self.integrity_errors = self._inner.integrity_errors

    def transaction(self):
        return self._inner.transaction()

    def read(self):
        return self._inner.read()

    def migrate(self, migrator):
        self._inner.migrate(migrator)

    def close(self):
        self._inner.close()
'''

ACME_PLUGIN_SOURCE = """
from durably import hookimpl

from acme_durably.dialect import AcmeDialect


class AcmePlugin:
    @hookimpl
    def durably_dialect_for_url(self, url):
        return AcmeDialect(url) if url.startswith("acme://") else None

    @hookimpl
    def durably_dialect_schemes(self):
        return ["acme"]


plugin = AcmePlugin()
"""

ACME_MODULE_PLUGIN_SOURCE = """
from durably import hookimpl

from acme_durably.dialect import AcmeDialect


@hookimpl
def durably_dialect_for_url(url):
    return AcmeDialect(url) if url.startswith("acme://") else None


@hookimpl
def durably_dialect_schemes():
    return ["acme"]
"""

# the three forms the SPEC allows for an entry point: a class, an instance or a module
ENTRY_POINT_FORMS = {
    "class": "acme_durably.plugin:AcmePlugin",
    "instance": "acme_durably.plugin:plugin",
    "module": "acme_durably.module_plugin",
}

SUBPROCESS_SCRIPT = """
import json, sys
import durably
from durably import create_durably, define_job

@define_job(name="greet")
def greet(step, payload):
    return {"text": step.run("greet", lambda: "hello " + payload["name"])}

with create_durably("acme:///" + sys.argv[1]) as d:
    d.migrate()
    run = d.register({"greet": greet})["greet"].trigger({"name": "ada"})
    d.process_until_idle()
    print(json.dumps({
        "status": d.get_run(run.id).status,
        "steps": [s.name for s in d.get_steps(run.id)],
        "dialect_module": type(d.dialect).__module__,
        "schemes": durably.installed_schemes(),
    }))
"""


def install_acme_distribution(site: Path, entry_point: str) -> None:
    """Lay out `acme_durably` and its dist-info in `site`, as pip would install them."""
    package = site / "acme_durably"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "dialect.py").write_text(ACME_DIALECT_SOURCE)
    (package / "plugin.py").write_text(ACME_PLUGIN_SOURCE)
    (package / "module_plugin.py").write_text(ACME_MODULE_PLUGIN_SOURCE)
    dist_info = site / "acme_durably-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme_durably\nVersion: 0.1\nRequires-Dist: durably\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[durably.dialects]\nacme = {entry_point}\n")


@pytest.mark.parametrize(
    "form",
    [
        "class",
        "instance",
        "module",
    ],
)
def test_plugin_installed_with_an_entry_point_is_found_by_a_fresh_process(
    form: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    install_acme_distribution(site, ENTRY_POINT_FORMS[form])
    workdir = tmp_path / "work"
    workdir.mkdir()
    db_file = tmp_path / "acme.db"
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SUBPROCESS_SCRIPT), str(db_file)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["steps"] == ["greet"]
    assert result["dialect_module"] == "acme_durably.dialect"
    assert "acme" in result["schemes"]
    assert "sqlite" in result["schemes"]
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT status FROM durably_runs").fetchall() == [("completed",)]


def test_source_checkout_that_is_not_installed_opens_sqlite_through_the_builtin_plugins(
    tmp_path: Path,
) -> None:
    """No durably distribution, so no entry points: the built-ins are registered in code."""
    repo = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ("durably", "durably_dialects", "alembic"):
        (checkout / part).symlink_to(repo / part)
    # the venv's packages without durably's own distribution (and its editable path hook)
    site = tmp_path / "site"
    site.mkdir()
    (venv_site,) = {Path(p) for p in sys.path if p.endswith("site-packages")}
    for entry in venv_site.iterdir():
        if "durably" not in entry.name.lower() and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(checkout)!r}, {str(site)!r}]
        import importlib.metadata, json
        import durably
        eps = importlib.metadata.entry_points(group="durably.dialects")
        with durably.create_durably("sqlite://") as d:
            d.migrate()
            kind = type(d.dialect).__module__
        print(json.dumps({{"file": durably.__file__, "eps": len(eps), "dialect": kind}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(checkout))
    assert result["eps"] == 0
    assert result["dialect"] == "durably_dialects.sqlite3"
