"""`triage.testing`: a private Redis, and queued work run to completion in-process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import redis
from dramatiq.errors import QueueJoinTimeout

from actors import runtime
from tests import worker_actors as wa
from tests.helpers import env_with
from triage.admin.redis_server import answers
from triage.testing import redis_server, run_queued

broker = runtime.broker


def _done(r: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in r.lrange(wa.DONE, 0, -1)]


def test_run_queued_runs_messages_and_what_they_enqueue(r: redis.Redis) -> None:
    # Given a critical message whose actor sends two background messages, and another critical one
    wa.parent_sends_children.send("p")
    wa.record_critical.send("c")
    # When the queued work of both tiers is run in this process
    run_queued(queues=["critical", "background"], timeout=30)
    # Then every message ran, the children included, and nothing is left queued or running
    done = _done(r)
    assert "critical:c" in done
    assert sorted(json.loads(x)[0] for x in done if x.startswith("[")) == ["p:inherited", "p:own"]


def test_run_queued_can_run_twice_in_one_process(r: redis.Redis) -> None:
    # Given a first run that stopped its worker
    wa.record_default.send("first")
    run_queued(queues=["default"], timeout=30)
    # When more work is queued and run again
    wa.record_default.send("second")
    run_queued(queues=["default"], timeout=30)
    # Then the second worker fetched it too (the first one's shutdown does not stop the broker)
    assert _done(r) == ["default:first", "default:second"]


def test_run_queued_times_out_naming_the_busy_queue(r: redis.Redis) -> None:
    # Given a message delayed by a minute
    wa.record_default.send_with_options(args=("later",), delay=60_000)
    # When run_queued is given half a second, then it raises, naming the queue that is not done
    with pytest.raises(QueueJoinTimeout, match="default"):
        run_queued(queues=["default"], timeout=0.5)


def test_redis_server_is_private_and_leaves_nothing() -> None:
    # When a private server is started and the block ends
    with redis_server() as server:
        assert answers(server.url)
        data_dir = server.data_dir
    # Then it no longer answers and its directory is gone
    assert not answers(server.url)
    assert not data_dir.exists()


def test_redis_runtime_installs_on_a_private_server_in_a_fresh_process() -> None:
    # Given a process that uses redis_runtime before declaring its actors, as a user's conftest does
    script = textwrap.dedent(
        """
        import os
        import redis
        from triage.testing import redis_runtime, run_queued

        before = os.environ.get("REDIS_URL")
        with redis_runtime(config={"QUEUES": {"t_q": "default"}}) as runtime:
            from triage import default

            client = redis.Redis.from_url(os.environ["REDIS_URL"])

            @default(queue="t_q")
            def job(x: int) -> None:
                client.rpush("out", x)

            for i in range(3):
                job.send(i)
            run_queued(queues=["t_q"])
            print(sorted(int(x) for x in client.lrange("out", 0, -1)), runtime.settings.queue_tiers()["t_q"])
            print(runtime.broker.client.connection_pool.connection_kwargs["port"] != 1)
        print(os.environ.get("REDIS_URL") == before)
        """
    )
    # When it runs (with REDIS_URL pointing where nothing listens)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env_with(REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then its actors ran on the private server, with its config, and REDIS_URL is restored after
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0, 1, 2] default", "True", "True"]
