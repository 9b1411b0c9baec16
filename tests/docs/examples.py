"""The Python examples of the Markdown documents, found and run as a reader would run them.

Guarantees:
- `documents()` is README.md and every `docs/**/*.md` of the repository, in a stable order.
- `parsers()` finds, in a document: fenced code blocks whose language is `python`, `py` or `pycon`,
  with or without attributes after it (mkdocs-material's ```python title="myapp/tasks.py"), and
  hidden ones, HTML comments that open with `<!-- invisible-code-block: python` on a line of their
  own and close with `-->` (sybil's Markdown code directive; the built page leaves them out): the
  set-up a visible example assumes and the checks of what it claims, run in document order with
  the visible blocks. A block that starts with `>>>` is a doctest. `<!-- skip: next -->` (sybil's
  skip directive, also `skip: start` / `skip: end`) skips blocks that truly cannot run, and
  `<!-- clear-namespace -->` starts a fresh namespace. `code_blocks(path)` is the first line of
  every such block (of a hidden one: the comment's first line).
- `python -m tests.docs.examples PATH` (from the repository root, `REDIS_URL` set) runs the blocks
  of PATH in document order, in one namespace of their own (`__name__` is `"__main__"`, as in a
  script), in a process of their own: the examples may install Triage, import the service's
  `actors`, start threads, and nothing leaks into the test process. A failing block does not stop
  the ones after it. For each block it prints one line, RESULT followed by JSON, flushed before the
  next block runs (the examples' own output may come between those lines and is not read)
  (so a block that hangs leaves the lines of those before it): `{"line": N, "outcome": "passed" |
  "skipped" | "failed", "detail": text}`, the detail of a failure being the exception and its
  traceback from the block's own lines (they carry the document's path and line numbers). A
  malformed directive (`skip: sideways`) stops the run, with exit status 1 and a line on stderr
  naming the document, the directive's line and the problem. The process then exits at once,
  whatever threads the examples left running.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import unittest
from collections.abc import Iterable, Iterator
from pathlib import Path

from sybil import Document, Example, Region
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import ClearNamespaceParser, CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.typing import Evaluator, Parser

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LANGUAGES = ("python", "py", "pycon")


class DirectiveError(Exception):
    """A skip or clear-namespace directive of the document is malformed: the blocks after it are not run."""


class _PythonFences(CodeBlockParser):
    """Fenced blocks whose info string starts with a Python language name, attributes allowed."""

    def __init__(self, language: str | None = None, evaluator: Evaluator | None = None) -> None:
        super().__init__(language, evaluator)
        self._run = evaluator

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexers(document):
            words = str(region.lexemes["arguments"]).split()
            if words and words[0] in PYTHON_LANGUAGES:
                region.parsed = region.lexemes["source"]
                region.evaluator = self._run
                yield region


class _PythonBlocks(PythonCodeBlockParser):
    codeblock_parser_class = _PythonFences


def parsers() -> list[Parser]:
    return [_PythonBlocks(), SkipParser(), ClearNamespaceParser()]


def documents(root: Path = ROOT) -> list[Path]:
    readme = root / "README.md"
    return ([readme] if readme.exists() else []) + sorted((root / "docs").glob("**/*.md"))


def _is_code(region: Region) -> bool:
    return isinstance(region.evaluator, PythonEvaluator | DocTestEvaluator)


def parse(path: Path) -> Document:
    """The document's examples; a malformed directive is an error naming the document."""
    try:
        return Document.parse(str(path), *parsers())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def code_blocks(path: Path) -> list[int]:
    """The line (1-based) of every Python block of the document (a doctest: of each of its examples)."""
    document = parse(path)
    return [example.line for example in document if _is_code(example.region)]


def _from_the_document(exc: BaseException, path: str) -> str:
    """The exception with its traceback from the first frame in the document (all of it if none)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__)).rstrip()


def _recorded(evaluator: Evaluator, ran: set[int]) -> Evaluator:
    """`evaluator`, noting each block it runs (a block the skip directive skips never reaches it)."""

    def evaluate(example: Example) -> str | None:
        ran.add(example.start)
        return evaluator(example)

    return evaluate


def run(path: Path) -> Iterator[dict[str, object]]:
    document = parse(path)
    document.namespace["__name__"] = "__main__"
    code = {start for start, region in document.regions if _is_code(region)}
    ran: set[int] = set()
    for _, region in document.regions:
        if region.start in code and region.evaluator is not None:
            region.evaluator = _recorded(region.evaluator, ran)
    for example in document:
        outcome, detail = "passed", ""
        try:
            example.evaluate()
        except unittest.SkipTest as exc:
            outcome, detail = "skipped", str(exc)
        except Exception as exc:
            outcome, detail = "failed", _from_the_document(exc, str(path))
        if outcome == "passed" and example.start in code and example.start not in ran:
            outcome, detail = "skipped", "marked `skip` in the document"
        if example.start in code:
            yield {"line": example.line, "outcome": outcome, "detail": detail}
        elif outcome == "failed":  # a malformed directive: name it on the next block's line
            raise DirectiveError(f"{path}:{example.line}: {detail.splitlines()[-1]}")


RESULT = "@@triage-example-result@@ "  # starts a result line (an example's own print does not)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m tests.docs.examples PATH.md")
    sys.path.insert(0, str(ROOT))  # the service's modules (actors, config), as from the repository root
    try:
        for result in run(Path(argv[0]).resolve()):
            print(RESULT + json.dumps(result), flush=True)
    except DirectiveError as exc:
        print(exc, file=sys.stderr)
        os._exit(1)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)  # threads an example started (a worker, a scheduler) do not hold the process


if __name__ == "__main__":
    main(sys.argv[1:])
