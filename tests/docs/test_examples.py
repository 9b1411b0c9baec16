"""Every Python example of README.md and docs/**/*.md runs, against the suite's redis-server.

Each document runs in a process of its own (`tests.docs.examples`), on a database emptied before
and after it; each of its blocks is one test, named `path:line`, and a failure says the block's
file and line and the exception. Hidden blocks (`<!-- invisible-code-block: python ... -->`) run
with the visible ones, in document order, and are tests too (named by the comment's line). A
block that truly cannot run is marked `<!-- skip: next -->` in the document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.docs.examples import RESULT, ROOT, code_blocks, documents
from tests.helpers import env_with

DOCUMENT_TIMEOUT = 60.0
CASES = [(document, line) for document in documents() for line in code_blocks(document)]

Outcomes = dict[int, dict[str, str]]


def _run_document(document: Path, redis_url: str) -> Outcomes:
    """The outcome of each block of `document`, by line; a block without one is given the reason."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    command = [sys.executable, "-m", "tests.docs.examples", str(document)]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env_with(), capture_output=True, text=True, timeout=DOCUMENT_TIMEOUT
        )
        stdout, missing = done.stdout, f"no result: the run of the document exited with {done.returncode}"
        stderr = done.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        missing = f"not finished: the document's run was stopped after {DOCUMENT_TIMEOUT:.0f} s (this block hangs)"
    finally:
        client.flushdb()
        client.close()
    outcomes: Outcomes = {}
    for line in stdout.splitlines():
        if not line.startswith(RESULT):
            continue  # what the examples print themselves
        result = json.loads(line.removeprefix(RESULT))
        outcomes[result["line"]] = {"outcome": result["outcome"], "detail": result["detail"]}
    for line_number in code_blocks(document):
        if line_number not in outcomes:
            outcomes[line_number] = {"outcome": "failed", "detail": f"{missing}\n{stderr[-3000:]}".rstrip()}
            missing = "not run: an earlier block stopped the document's run"
    return outcomes


@pytest.fixture(scope="module")
def outcomes_of() -> Callable[[Path], Outcomes]:
    """Runs a document once, when its first block is tested, and keeps the outcomes of its blocks."""
    runs: dict[Path, Outcomes] = {}

    def outcomes(document: Path) -> Outcomes:
        if document not in runs:
            runs[document] = _run_document(document, os.environ["REDIS_URL"])
        return runs[document]

    return outcomes


@pytest.mark.parametrize(
    ("document", "line"), CASES, ids=[f"{document.relative_to(ROOT)}:{line}" for document, line in CASES]
)
def test_the_example_runs(document: Path, line: int, outcomes_of: Callable[[Path], Outcomes]) -> None:
    # Given the document's Python blocks, run in order in a fresh process and an empty database
    # When the block at `line` ran
    result = outcomes_of(document)[line]
    where = f"{document.relative_to(ROOT)}:{line}"
    # Then it raised nothing (or it was marked as skipped in the document)
    if result["outcome"] == "skipped":
        pytest.skip(f"{where}: {result['detail']}")
    if result["outcome"] != "passed":
        pytest.fail(f"the example at {where} failed:\n{result['detail']}", pytrace=False)


def test_a_document_s_blocks_are_run_skipped_or_reported_with_their_line(tmp_path: Path) -> None:
    # Given a document with a block that passes, one that uses the namespace the first one left,
    # one marked as skipped, one with mkdocs-material's title attribute, and one that fails
    document = tmp_path / "page.md"
    document.write_text(
        "# Page\n\n"
        "```python\nimport os, redis\nclient = redis.Redis.from_url(os.environ['REDIS_URL'])\n"
        "assert client.dbsize() == 0\nclient.set('key', 1)\n```\n\n"
        "```py\nassert client.get('key') == b'1'\n```\n\n"
        "<!-- skip: next -->\n\n```python\nraise AssertionError('a skipped block ran')\n```\n\n"
        '```python title="myapp/tasks.py"\nassert __name__ == "__main__"\n```\n\n'
        "```python\n\nvalue = {}\nvalue['missing']\n```\n",
        encoding="utf-8",
    )
    assert code_blocks(document) == [3, 10, 16, 20, 24]
    # When it is run
    outcomes = _run_document(document, os.environ["REDIS_URL"])
    # Then each block has its outcome, and the failure names the document's file and line, and the exception
    assert [outcomes[line]["outcome"] for line in (3, 10, 16, 20)] == ["passed", "passed", "skipped", "passed"]
    assert outcomes[24]["outcome"] == "failed"
    assert f'File "{document}", line 27' in outcomes[24]["detail"]
    assert outcomes[24]["detail"].endswith("KeyError: 'missing'")


def test_a_malformed_directive_is_named_with_its_line(tmp_path: Path) -> None:
    # Given a document whose skip directive has an action sybil does not know
    document = tmp_path / "page.md"
    document.write_text("<!-- skip: sideways -->\n```python\npass\n```\n", encoding="utf-8")
    # When it is run
    outcomes = _run_document(document, os.environ["REDIS_URL"])
    # Then the block after it fails with the directive's file, line and problem
    assert outcomes[2]["outcome"] == "failed"
    assert f"{document}:1: ValueError: Bad skip action: sideways" in outcomes[2]["detail"]


def test_hidden_blocks_set_up_and_check_the_visible_example_in_document_order(tmp_path: Path) -> None:
    # Given a document whose visible example uses what a hidden block defined before it, followed
    # by a hidden check that holds and one that does not
    document = tmp_path / "page.md"
    document.write_text(
        "# Page\n\n"
        "<!-- invisible-code-block: python\nclass Bot:\n    def send(self, text):\n        return text.upper()\n\n\n"
        "bot = Bot()\n-->\n\n"
        "```python\nreply = bot.send('hi')\n```\n\n"
        "<!-- invisible-code-block: python\nassert reply == 'HI', reply\n-->\n\n"
        "<!-- invisible-code-block: python\nassert reply == 'hi', reply\n-->\n",
        encoding="utf-8",
    )
    assert code_blocks(document) == [3, 12, 16, 20]
    # When it is run
    outcomes = _run_document(document, os.environ["REDIS_URL"])
    # Then every block ran, hidden ones included, and the failing check names its line and the claim
    assert [outcomes[line]["outcome"] for line in (3, 12, 16)] == ["passed", "passed", "passed"]
    assert outcomes[20]["outcome"] == "failed"
    assert f'File "{document}", line 21' in outcomes[20]["detail"]
    assert outcomes[20]["detail"].endswith("AssertionError: HI")
