"""What the metrics show and never show: no message argument in any metrics page or in the logs
at INFO (a canary secret sent as an argument), and the web process's figures as fresh as Redis
(a send is in the very next scrape: nothing is cached)."""

from __future__ import annotations

import redis

from actors import default, runtime
from tests.helpers import dramatiq_worker, wait_for
from tests.web_helpers import Server, serving
from triage.admin.redis_server import free_port

QUEUE = "t_canary"
CANARY = "canary-7d41e9-secret-argument"


@default(queue=QUEUE)
def t_canary_job(secret: str, card: dict[str, str]) -> None: ...


@default(queue=QUEUE, max_retries=0)
def t_canary_fails(secret: str) -> None:
    raise RuntimeError("the payment gateway refused")  # its arguments are not in the error


def test_no_argument_appears_in_metrics_or_logs(r: redis.Redis) -> None:
    # Given a worker with metrics on a port and the web process, and messages carrying a secret
    # as an argument (positional and nested), 3 that succeed and 1 that fails for good
    port = free_port()
    for _ in range(3):
        t_canary_job.send(CANARY, {"number": CANARY})
    t_canary_fails.send(CANARY)
    with (
        serving() as web,
        dramatiq_worker(
            "actors", "tests.integration.test_metrics_privacy", queues=[QUEUE], TRIAGE_METRICS_PORT=str(port)
        ) as worker,
    ):
        wait_for(lambda: runtime.queue_stats()[QUEUE]["acked_total"] == 3, 30)
        wait_for(lambda: runtime.queue_stats()[QUEUE]["dead_letters_total"] == 1, 30)
        worker_metrics = Server(port, worker.process)

        # When both metrics pages are scraped, once the worker has flushed its tallies
        def flushed() -> bool:
            try:
                return 'outcome="dead"' in worker_metrics.get("/metrics")[1]
            except OSError:  # its exposition process is still starting
                return False

        wait_for(flushed, 30)
        pages = [worker_metrics.get("/metrics")[1], web.get("/metrics", token=web.local_token)[1]]
        stats = web.get("/api/v1/admin/queue/stats", token=web.local_token)[1]
    # Then the runs are counted, and the secret is in no page and in no log line
    assert "t_canary_job" in pages[0]
    assert QUEUE in pages[1]
    assert QUEUE in stats
    assert "Uvicorn running" in web.output  # the web process's log was read
    for text in (*pages, "".join(worker.log), web.output):
        assert CANARY not in text


def test_a_send_is_in_the_next_scrape(r: redis.Redis) -> None:
    # Given the web process, and a paused queue (so nothing takes the messages)
    runtime.broker.declare_queue(QUEUE)
    runtime.broker.pause(QUEUE)
    with serving() as web:
        for expected in (1, 2, 3):
            # When a message is sent, and the web process is scraped right after
            t_canary_job.send("x", {})
            page = web.get("/metrics", token=web.local_token)[1]
            # Then the scrape already counts it: figures are read from Redis at each request
            line = f'triage_queue_messages{{queue="{QUEUE}",state="queued",tier="default"}} {expected}.0'
            assert line in page
