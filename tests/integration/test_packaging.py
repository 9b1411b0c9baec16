"""The library as an application installs it: the `dramatiq-triage` wheel, built from the
repository and installed into a fresh virtualenv (never the checkout), gives one `triage`
package next to the app's own modules, the `triage` CLI (its version, `deploy-files`, `serve`)
and the deploy files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import triage
from tests.helpers import ROOT, Worker, env_with, wait_for
from tests.web_helpers import Server
from triage.admin.redis_server import free_port


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the distribution is made of (the build leaves nothing in the repository)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "triage", source / "triage", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("dramatiq_triage-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    # Given the wheel built from the repository
    names = zipfile.ZipFile(wheel).namelist()
    # Then its only top-level package is `triage` (the service's actors, config and middleware stay out)
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"triage"}
    # And it ships the Lua scripts and the typing marker
    assert "triage/py.typed" in names
    assert {"triage/broker/lua/_fifo.lua", "triage/broker/lua/fetch.lua"} <= set(names)
    # And the dashboard's templates and static files, and every deploy file of the repository
    assert {"triage/admin/dashboard/templates/base.html", "triage/admin/dashboard/static/dashboard.css"} <= set(names)
    deploy = ROOT / "triage" / "deploy"
    shipped = {f"triage/deploy/{p.relative_to(deploy).as_posix()}" for p in deploy.rglob("*") if p.is_file()}
    assert {
        "triage/deploy/Procfile",
        "triage/deploy/prometheus/rules.yml",
        "triage/deploy/grafana/triage.json",
    } <= shipped
    assert shipped <= set(names)
    # And its metadata names the distribution `dramatiq-triage`, at the version of triage/__init__.py
    (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode().split("\n\n")[0].splitlines()
    assert "Name: dramatiq-triage" in headers
    assert f"Version: {triage.__version__}" in headers


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh virtualenv with the wheel installed, shared by this module's tests."""
    started = time.monotonic()
    made = _fresh_venv(tmp_path_factory.mktemp("clean"), wheel)
    # Seconds: no pip inside it, no download (measured under 1 s on 2 cores)
    assert time.monotonic() - started < 30
    return made


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed; its dependencies come from this test's environment."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Dependencies (dramatiq, redis, pydantic, ...) from this environment, after the venv's own packages.
    # A path listed in a .pth file is added as it is: the editable install of the repository there is not.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


APP = {
    # The app's own modules, named as most Flask and Django apps name theirs.
    "config.py": 'GREETING = "from the app\'s own config"\n',
    "middleware.py": "def wsgi_middleware(app):\n    return app\n",
    "tasks.py": """
        import os

        import redis

        import config
        from triage import critical

        _client = redis.Redis.from_url(os.environ["REDIS_URL"])


        @critical
        def record(token: str) -> None:
            _client.rpush("app:done", f"{config.GREETING}:{token}")
    """,
    "send.py": """
        import tasks

        for i in range(5):
            tasks.record.send(str(i))
    """,
}


def _app(root: Path) -> Path:
    app = root / "app"
    app.mkdir()
    for name, text in APP.items():
        (app / name).write_text(textwrap.dedent(text).lstrip())
    return app


def _env(redis_url: str) -> dict[str, str]:
    """The environment of a process of the fresh venv: the repository is not on its path."""
    env = env_with(REDIS_URL=redis_url)
    env.pop("PYTHONPATH", None)
    env.pop("TRIAGE_APP", None)
    return env


def test_an_app_with_its_own_config_module_uses_the_installed_library(
    venv: Path, tmp_path: Path, r: redis.Redis, redis_url: str
) -> None:
    # Given a fresh virtualenv with only the wheel installed, and an app with its own config and middleware modules
    python = str(venv / "bin" / "python")
    app = _app(tmp_path)
    env = _env(redis_url)
    where = subprocess.run(
        [python, "-c", "import triage, config; print(triage.__file__); print(config.__file__)"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed library, not the repository
    assert where[1] == str(app / "config.py")  # and the app's own config module
    # When the app sends messages with `from triage import critical`
    sent = subprocess.run([python, "send.py"], cwd=app, env=env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    # And a real dramatiq worker of that venv runs the app's actors
    process = subprocess.Popen(
        [python, "-m", "dramatiq", "tasks", "--processes", "1", "--threads", "2"],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = Worker(process)
    try:
        worker.wait_ready()
        wait_for(lambda: r.llen("app:done") == 5)
    finally:
        assert worker.stop() == 0, "".join(worker.log[-30:])
    # Then every message ran, reading the app's own config
    done = sorted(x.decode() if isinstance(x, bytes) else x for x in r.lrange("app:done", 0, -1))
    assert done == [f"from the app's own config:{i}" for i in range(5)]
    # And `triage stats --json`, run where the app cannot be imported, shows them from Redis alone
    stats = subprocess.run(
        [str(venv / "bin" / "triage"), "stats", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert stats.returncode == 0, stats.stderr
    critical = json.loads(stats.stdout)["queues"]["critical"]
    assert (critical["enqueued_total"], critical["acked_total"], critical["queued"]) == (5, 5, 0)


@pytest.fixture
def served(venv: Path, tmp_path: Path, redis_url: str) -> Iterator[tuple[Server, Path]]:
    """`triage serve --app tasks` of the fresh venv, in the app's directory."""
    app = _app(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [str(venv / "bin" / "triage"), "serve", "--app", "tasks", "--port", str(port)],
        cwd=app,
        env=_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(port, process)
    try:
        yield server, app
    finally:
        process.terminate()
        process.wait(10)
        server.stopped()


def test_the_installed_cli_tells_its_version_ships_the_deploy_files_and_serves(
    venv: Path, served: tuple[Server, Path], redis_url: str
) -> None:
    # Given the fresh venv's `triage`, in an app's directory, and its `triage serve --app tasks` starting
    server, app = served
    cli, env = str(venv / "bin" / "triage"), _env(redis_url)
    # When it is asked its version
    version = subprocess.run([cli, "--version"], cwd=app, env=env, capture_output=True, text=True, timeout=60)
    # Then it is the package's, the one the installed distribution's metadata has too
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"triage {triage.__version__} (dramatiq-triage)"
    metadata = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('dramatiq-triage'))"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert metadata.stdout.strip() == triage.__version__
    # When it writes the deploy files for the app's module
    wrote = subprocess.run(
        [cli, "deploy-files", "deploy", "--app", "tasks"], cwd=app, env=env, capture_output=True, text=True, timeout=60
    )
    # Then they are the repository's, from the installed package, the Procfile naming the app's module
    assert wrote.returncode == 0, wrote.stderr
    deploy = app / "deploy"
    for name in ("prometheus/rules.yml", "prometheus/prometheus.yml", "grafana/triage.json", "RUNBOOK.md"):
        assert (deploy / name).read_bytes() == (ROOT / "triage" / "deploy" / name).read_bytes(), name
    procfile = (deploy / "Procfile").read_text()
    assert "Q=$(triage queues critical --app tasks) && exec dramatiq tasks --queues $Q" in procfile
    assert "myapp.tasks" not in procfile.split("\nweb:", 1)[1]
    # And `triage serve` of the fresh venv answers /healthz, and its dashboard renders from the wheel's templates

    def up() -> bool:
        try:
            return server.get("/healthz")[0] == 200
        except OSError:
            assert server.process.poll() is None, "".join(server.lines)
            return False

    wait_for(up, 20)
    status, page = server.get("/login")
    assert status == 200, page
    assert "<form" in page


def test_the_version_is_read_from_the_package_alone() -> None:
    # Given the repository's pyproject.toml
    pyproject = (ROOT / "pyproject.toml").read_text()
    # Then the version is not written there: the build reads triage.__version__ (the wheel's metadata
    # carrying it is checked above)
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "triage.__version__" }' in pyproject
    assert "\nversion =" not in pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
