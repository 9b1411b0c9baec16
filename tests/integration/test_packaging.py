"""The library as an application installs it: one `triage` package, next to the app's own modules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import redis

from tests.helpers import ROOT, Worker, env_with, wait_for


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
    (built,) = out.glob("triage-*.whl")
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


def test_an_app_with_its_own_config_module_uses_the_installed_library(
    wheel: Path, tmp_path: Path, r: redis.Redis, redis_url: str
) -> None:
    # Given a fresh virtualenv with only the wheel installed, and an app with its own config and middleware modules
    venv = _fresh_venv(tmp_path, wheel)
    python = str(venv / "bin" / "python")
    app = tmp_path / "app"
    app.mkdir()
    for name, text in APP.items():
        (app / name).write_text(textwrap.dedent(text).lstrip())
    env = env_with(REDIS_URL=redis_url)
    env.pop("PYTHONPATH", None)
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
