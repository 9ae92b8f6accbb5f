"""Hostile zstd:chunked layers through the real CLI (tests/hostile/ is the generator and
the oracle): every named case through every command, and a seeded sample of random
mutations through the cheap commands (a few through a real FUSE mount as well).

Each case x command is a test of its own, named ``<case>-<command>``. The commands of a
case run together the first time one of its tests asks, and the outcomes are kept for
the case's other tests (see Outcomes).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import hostile
from tests.need import need, need_fuse

SEED = 20_240_601
RANDOM_CASES = 100
MOUNTED_RANDOM_CASES = 15  # the first of the random cases: every class twice, one thrice
# Short timeouts: a hang costs its timeout, and the file has four minutes in all. A
# command on these small layers takes well under a second.
LIMITS = hostile.Limits(timeout=20, mount_timeout=15, walk_timeout=20, rss_limit_mib=512,
                        cat_paths=4)
HAS_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


class Outcomes:
    """Each case generated, written and run once; its outcomes kept by command.

    The tests ask for cases in collection order, so the case asked for and the next two
    of the selected tests run at once: the commands of one case are few and end unevenly
    (a mount takes longest), and two cases side by side keep both cores busy."""

    AHEAD = 2

    def __init__(self, work: Path, plan: list[str]):
        self.runner = hostile.Runner(work, LIMITS, jobs=2)
        self.plan = plan
        self.pool = cf.ThreadPoolExecutor(1 + self.AHEAD, "hostile-case")
        self.futures: dict[str, cf.Future[dict[str, hostile.Outcome]]] = {}

    def get(self, key: str, command: str) -> hostile.Outcome:
        at = self.plan.index(key) if key in self.plan else len(self.plan)
        for k in [key] + self.plan[at + 1:at + 1 + self.AHEAD]:
            if k not in self.futures:
                self.futures[k] = self.pool.submit(self._run, k)
        return self.futures[key].result()[command]

    def _run(self, key: str) -> dict[str, hostile.Outcome]:
        make, commands = CASES[key]
        cd = self.runner.prepare(make())
        try:
            return self.runner.run(cd, commands)
        finally:
            hostile.remove_tree(cd.root)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcomes]:
    plan: list[str] = []
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        key = _key(params.params) if params is not None else None
        if key in CASES and key not in plan:
            plan.append(key)
    o = Outcomes(tmp_path_factory.mktemp("hostile"), plan)
    yield o
    o.pool.shutdown(cancel_futures=True)


def _check(outcome: hostile.Outcome) -> None:
    need(outcome.status != hostile.SKIPPED, outcome.reason)
    assert outcome.status != hostile.FAILED, outcome.explain()


def _random_commands(index: int) -> tuple[str, ...]:
    mounted = index < MOUNTED_RANDOM_CASES and HAS_FUSE
    return hostile.CHEAP + ("mount",) if mounted else hostile.CHEAP


# key -> (the case's factory, the commands it goes through)
CASES: dict[str, tuple[Callable[[], hostile.Case], tuple[str, ...]]] = {
    f"named:{name}": (functools.partial(hostile.named_case, name, hostile.SMALL),
                      hostile.COMMANDS)
    for name in hostile.NAMED
}
CASES.update({f"random:{i}": (functools.partial(hostile.random_case, SEED, i),
                              _random_commands(i)) for i in range(RANDOM_CASES)})


def _key(params: dict[str, object]) -> str | None:
    if "name" in params:
        return f"named:{params['name']}"
    if "index" in params:
        return f"random:{params['index']}"
    return None


NAMED = [(name, command) for name in hostile.NAMED for command in hostile.COMMANDS]


@pytest.mark.parametrize(("name", "command"), NAMED, ids=[f"{n}-{c}" for n, c in NAMED])
def test_named(outcomes: Outcomes, name: str, command: str) -> None:
    if command == "mount":
        need_fuse()
    _check(outcomes.get(f"named:{name}", command))


RANDOM = [(i, c) for i in range(RANDOM_CASES) for c in hostile.CHEAP]
RANDOM += [(i, "mount") for i in range(MOUNTED_RANDOM_CASES)]
RANDOM.sort()


def _random_id(index: int, command: str) -> str:
    klass = list(hostile.CLASSES)[index % len(hostile.CLASSES)]
    return f"{klass}-{SEED}-{index}-{command}"


@pytest.mark.parametrize(("index", "command"), RANDOM, ids=[_random_id(i, c) for i, c in RANDOM])
def test_random(outcomes: Outcomes, index: int, command: str) -> None:
    if command == "mount":
        need_fuse()
    _check(outcomes.get(f"random:{index}", command))


def test_resign_round_trip() -> None:
    """The re-signer without a mutation gives a layer the plain decoder and the CLI's own
    checks take, so every failure above is the mutation's."""
    parts = hostile.Parts.base()
    layer = hostile.assemble(parts)
    again = hostile.Parts.of(layer.blob)
    assert again.toc == parts.toc and again.tarsplit == parts.tarsplit
    assert again.data == parts.data
    assert hostile.unzstd(layer.blob) == hostile.unzstd(hostile._base_blob(False))
    ann = layer.descriptor["annotations"]
    assert ann[hostile.NEW + "manifest-checksum"] == ann[hostile.OLD + "manifest-checksum"]


def test_random_cases_are_reproducible() -> None:
    for index in range(len(hostile.CLASSES)):
        a, b = hostile.random_case(SEED, index), hostile.random_case(SEED, index)
        assert a.note == b.note and a.layers[0].blob == b.layers[0].blob
