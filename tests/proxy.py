"""A real nginx reverse proxy for the tests: Debian's /usr/sbin/nginx, run as a process of the test's own.

What these helpers guarantee:
- `require_nginx()` skips the calling test where nginx is not installed, except under CI (`CI` set, as for
  Chromium and Prometheus), where a missing nginx fails the test: `make tools` installs it with apt there.
- `nginx_in_front(port, directives)` runs nginx in the foreground on a free port of 127.0.0.1, proxying every path
  to 127.0.0.1:`port` with the given `proxy_set_header` lines (none: nginx's defaults, which send Host as the
  upstream's address); its pid, logs and temporary files live in a temporary directory (nothing under /var or /etc
  is written, so it runs as any user), and it is stopped when the block ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import wait_for
from triage.admin.redis_server import free_port

NGINX = Path("/usr/sbin/nginx")


def require_nginx() -> None:
    """Skips the calling test where nginx is missing; under CI, fails it instead."""
    if os.access(NGINX, os.X_OK):
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {NGINX} is missing: `make tools` installs Debian's nginx with apt-get (as root)")
    pytest.skip(f"{NGINX} is not installed (make tools installs Debian's nginx with apt)")


@contextmanager
def nginx_in_front(upstream: int, directives: str = "") -> Iterator[int]:
    """nginx proxying 127.0.0.1:<its port> to 127.0.0.1:`upstream`; yields its port."""
    require_nginx()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="triage-nginx-") as directory:
        temp = {name: f"{directory}/{name}" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        config = Path(directory) / "nginx.conf"
        config.write_text(
            f"worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"  access_log {directory}/access.log;\n"
            + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items())
            + f"  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n"
            f"      proxy_pass http://127.0.0.1:{upstream};\n{directives}    }}\n  }}\n}}\n"
        )
        process = subprocess.Popen(
            [str(NGINX), "-p", directory, "-e", f"{directory}/error.log", "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def listening() -> bool:
                assert process.poll() is None, process.stderr.read() if process.stderr else "nginx exited"
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return True
                except OSError:
                    return False

            wait_for(listening, 20)
            yield port
        finally:
            process.terminate()
            process.wait(10)
            if process.stderr is not None:
                process.stderr.close()
