"""The working copy's stores, fingerprinted, so that running the tests provably leaves them alone.

`make test` saves a fingerprint before pytest and checks it after (`python tests/store_guard.py save FILE`, then
`check FILE`): a user who ran `make demo` keeps their registry, knowledge base and releases byte for byte.
`WorkingCopyGuard`, which tests/conftest.py plugs into pytest, takes a cheaper one after every test, to fail the
test that wrote there.

Cost on a big demo store (2 GB in ~2,000 files, most of it model weights): a file up to `CONTENT_LIMIT` is
hashed whole; a larger one is fingerprinted by size and modification time in nanoseconds. The large files are
model weights and archives, which MLflow and BentoML write once under new version folders and never rewrite in
place, so any write to them moves their mtime; hashing them would be most of the cost for no more safety.
"""

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every place the default settings keep state (supportflow/settings.py), and where MLflow and Great Expectations
# put theirs when a path is relative: the lake, the registry and its artifacts (`mlruns` is MLflow's default
# artifact root), the KB builds, the Rasa project, bundles, the background stack's records, the handoff queue,
# other desks' stores, data docs and the benchmark results.
STORES = (".lake", "mlflow.db", "mlruns", "mlartifacts", ".kb", ".rasa", ".bentoml", ".run", "handoff.db", ".desks", "gx", "bench/results")
CONTENT_LIMIT = 8 << 20
# The stack `make demo` leaves serving keeps appending to its logs while the tests run; nothing else may change.
GROWING_SUFFIXES = (".log",)


def _state(entry: os.DirEntry[str], content: bool) -> str:
    if entry.is_symlink():
        return f"link {os.readlink(entry.path)}"
    if entry.is_dir():
        return "folder"
    stat = entry.stat()
    if content and stat.st_size <= CONTENT_LIMIT:
        with open(entry.path, "rb") as file:
            return f"{stat.st_size} blake2b {hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()}"
    return f"{stat.st_size} mtime {stat.st_mtime_ns}"


def _walk(folder: str, prefix: int, content: bool, found: dict[str, str]) -> None:
    """`prefix`: the length of the root's path and its slash, cut from each path (os.path.relpath is most of the cost)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(GROWING_SUFFIXES):
                continue
            found[entry.path[prefix:]] = _state(entry, content)
            if entry.is_dir(follow_symlinks=False):
                _walk(entry.path, prefix, content, found)


def fingerprint(root: Path = ROOT, content: bool = True) -> dict[str, str]:
    """Each path under the stores, relative to `root`, with what identifies its state; `content=False` uses only
    sizes and modification times (a few milliseconds on a demo store: cheap enough to run after every test)."""
    found: dict[str, str] = {}
    with os.scandir(root) as entries:
        tops = {entry.name: entry for entry in entries}
    for store in STORES:
        parent, _, name = store.rpartition("/")
        if parent:  # a store inside a folder: bench/results
            if not (root / parent).is_dir():
                continue
            with os.scandir(root / parent) as entries:
                entry = next((entry for entry in entries if entry.name == name), None)
        else:
            entry = tops.get(name)
        if entry is None:
            continue
        found[store] = _state(entry, content)
        if entry.is_dir(follow_symlinks=False):
            _walk(entry.path, len(str(root)) + 1, content, found)
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per path that appeared, disappeared or changed, sorted."""
    lines = [f"added    {path}" for path in after.keys() - before.keys()]
    lines += [f"removed  {path}" for path in before.keys() - after.keys()]
    lines += [f"changed  {path}" for path in before.keys() & after.keys() if before[path] != after[path]]
    return sorted(lines, key=lambda line: line[9:])


def describe(lines: list[str], limit: int = 40) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:limit])
    return shown + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


class WorkingCopyGuard:
    """A pytest plugin: fails the test during which the stores under `root` changed (its body, its fixtures'
    set-up or tear-down, or for the first test the imports of collection). Sizes and mtimes only.

    Under pytest-xdist each worker keeps its own last fingerprint, so a write is reported by the writer and also
    by the next test another worker finishes: the message says so, and `make test`'s check names the paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.last: dict[str, str] = {}

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.last = fingerprint(self.root, content=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:  # after every finaliser of this test, a module's or the session's included
            before, self.last = self.last, fingerprint(self.root, content=False)
            changed = changes(before, self.last)
            if changed:
                beside = " (or a test another pytest-xdist worker ran meanwhile)" if hasattr(item.config, "workerinput") else ""
                message = f"{item.nodeid}{beside} wrote into the working copy's stores ({self.root}):\n{describe(changed)}"
                pytest.fail(message, pytrace=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fingerprint the working copy's stores, or check them against a fingerprint.")
    parser.add_argument("action", choices=["save", "check"])
    parser.add_argument("file", type=Path, help="where the fingerprint is kept (outside the stores)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the working copy (default: this one)")
    args = parser.parse_args(argv)
    if args.action == "save":
        args.file.write_text(json.dumps(fingerprint(args.root)))
        return 0
    changed = changes(json.loads(args.file.read_text()), fingerprint(args.root))
    if changed:
        print(f"the tests changed the working copy's stores in {args.root}:\n{describe(changed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
