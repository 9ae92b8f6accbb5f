"""The local content cache: verified on every read, atomic on write, bounded by LRU."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from chunked.cache import chunks as cache_mod
from chunked.cache.chunks import ContentCache, default_cache_dir
from chunked.cli import main
from chunked.errors import FormatError


def dg(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def path_of(root, digest: str) -> str:
    hexd = digest.split(":", 1)[1]
    return os.path.join(str(root), "sha256", hexd[:2], hexd[2:])


def test_round_trip_and_layout(tmp_path):
    c = ContentCache(str(tmp_path))
    data = b"hello chunk"
    d = dg(data)
    assert not c.contains(d)
    assert c.get(d) is None
    c.put(d, data)
    assert c.contains(d)
    assert c.get(d) == data
    with open(path_of(tmp_path, d), "rb") as f:
        assert f.read() == data
    st = c.stats()
    assert st == {"entries": 1, "bytes": len(data), "limit": 10 << 30, "root": str(tmp_path)}


def test_empty_content(tmp_path):
    c = ContentCache(str(tmp_path))
    c.put(dg(b""), b"")
    assert c.get(dg(b"")) == b""


def test_wrong_digest_rejected(tmp_path):
    c = ContentCache(str(tmp_path))
    with pytest.raises(ValueError):
        c.put(dg(b"other"), b"data")
    with pytest.raises(FormatError):
        c.put("sha256:../../etc/passwd", b"data")
    with pytest.raises(FormatError):
        c.get("md5:" + "0" * 32)
    assert c.stats()["entries"] == 0
    assert not os.path.exists(tmp_path / "sha256") or not any(
        files for _, _, files in os.walk(tmp_path / "sha256"))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_get_reverifies_and_drops_damaged_file(tmp_path, damage):
    c = ContentCache(str(tmp_path))
    data = b"x" * 1000
    d = dg(data)
    c.put(d, data)
    p = path_of(tmp_path, d)
    with open(p, "r+b") as f:
        if damage == "flip":
            f.seek(500)
            f.write(b"y")
        else:
            f.truncate(10)
    assert c.get(d) is None
    assert not os.path.exists(p)
    assert not c.contains(d)
    assert c.stats()["bytes"] == 0
    c.put(d, data)  # refetched bytes are accepted again
    assert c.get(d) == data


def test_put_heals_damaged_file_of_other_size(tmp_path):
    c = ContentCache(str(tmp_path))
    data = b"payload" * 10
    d = dg(data)
    c.put(d, data)
    with open(path_of(tmp_path, d), "ab") as f:
        f.write(b"junk")
    c.put(d, data)
    assert c.get(d) == data
    assert c.stats()["bytes"] == len(data)


def test_leftover_tmp_is_ignored_and_pruned_when_old(tmp_path):
    c = ContentCache(str(tmp_path))
    data = b"complete"
    d = dg(data)
    c.put(d, data)
    # what a crash mid-put leaves: a partial temp file next to where the entry would go
    partial = b"half of something"
    pd = dg(partial)
    sub = os.path.dirname(path_of(tmp_path, pd))
    os.makedirs(sub, exist_ok=True)
    old_tmp = os.path.join(sub, ".tmp-crashed")
    new_tmp = os.path.join(sub, ".tmp-inflight")
    for p in (old_tmp, new_tmp):
        with open(p, "wb") as f:
            f.write(partial[:4])
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old_tmp, (two_hours_ago, two_hours_ago))

    fresh = ContentCache(str(tmp_path))
    assert not fresh.contains(pd)
    assert fresh.get(pd) is None
    assert fresh.stats()["entries"] == 1
    assert fresh.stats()["bytes"] == len(data)

    removed, freed = fresh.prune(max_bytes=1 << 20)
    assert (removed, freed) == (1, 4)
    assert not os.path.exists(old_tmp)
    assert os.path.exists(new_tmp)  # may be a put still running in another process
    assert fresh.get(d) == data


def test_put_leaves_no_tmp_files(tmp_path):
    c = ContentCache(str(tmp_path))
    for i in range(20):
        b = b"%d" % i
        c.put(dg(b), b)
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith(".tmp-")]
    assert leftovers == []


def test_concurrent_puts_from_threads(tmp_path):
    c = ContentCache(str(tmp_path))
    shared = [b"shared-%d" % i * 100 for i in range(5)]
    own = {t: [b"thread-%d-%d" % (t, i) * 50 for i in range(20)] for t in range(8)}
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                c.put(dg(own[t][i]), own[t][i])
                s = shared[i % len(shared)]
                c.put(dg(s), s)
                assert c.get(dg(s)) == s
        except BaseException as exc:  # surfaced below; a thread's assert would be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []

    everything = set(shared) | {b for bs in own.values() for b in bs}
    for b in everything:
        assert c.get(dg(b)) == b
    expected = sum(len(b) for b in everything)
    assert c._bytes == expected  # the running count, before any rescan corrects it
    assert c.stats() == {"entries": len(everything), "bytes": expected, "limit": 10 << 30,
                         "root": str(tmp_path)}


def test_eviction_bounds_size_and_removes_lru(tmp_path):
    c = ContentCache(str(tmp_path), limit_bytes=1000)
    blobs = [bytes([i]) * 200 for i in range(5)]  # 1000 bytes: at the limit, not above
    for b in blobs:
        c.put(dg(b), b)
    assert c.stats()["bytes"] == 1000
    # use them in a known order: blob 2 becomes least recently used, then 4
    for i in (2, 4, 0, 1, 3):
        assert c.get(dg(blobs[i])) == blobs[i]
    extra = b"\xff" * 200
    c.put(dg(extra), extra)  # 1200 > 1000: evict to below 900
    st = c.stats()
    assert st["bytes"] < 900
    assert st["bytes"] == 800
    assert not c.contains(dg(blobs[2]))
    assert not c.contains(dg(blobs[4]))
    assert c.get(dg(blobs[2])) is None
    for b in (blobs[0], blobs[1], blobs[3], extra):
        assert c.get(dg(b)) == b


def test_eviction_keeps_bound_over_many_puts(tmp_path):
    c = ContentCache(str(tmp_path), limit_bytes=5000)
    for i in range(100):
        b = i.to_bytes(2, "big") * 150
        c.put(dg(b), b)
        assert c._bytes <= 5000
    assert c.stats()["bytes"] <= 5000


def test_reader_with_open_file_survives_eviction(tmp_path):
    c = ContentCache(str(tmp_path))
    data = b"still readable" * 100
    d = dg(data)
    c.put(d, data)
    with open(path_of(tmp_path, d), "rb") as f:
        assert c.prune(0) == (1, len(data))
        assert f.read() == data
    assert c.get(d) is None


def test_second_instance_sees_entries(tmp_path):
    a = ContentCache(str(tmp_path))
    data = b"shared between processes"
    a.put(dg(data), data)
    b = ContentCache(str(tmp_path))
    assert b.contains(dg(data))
    assert b.get(dg(data)) == data
    # and an entry added after b built its index is still found on disk
    later = b"added later"
    a.put(dg(later), later)
    assert b.contains(dg(later))
    assert b.stats()["entries"] == 2


def test_prune_zero_empties(tmp_path):
    c = ContentCache(str(tmp_path))
    blobs = [b"%d" % i * 10 for i in range(10)]
    for b in blobs:
        c.put(dg(b), b)
    assert c.prune(0) == (10, sum(len(b) for b in blobs))
    assert c.stats()["entries"] == 0
    assert c.stats()["bytes"] == 0
    assert all(not c.contains(dg(b)) for b in blobs)
    with pytest.raises(ValueError):
        c.prune(-1)


def test_prune_missing_root(tmp_path):
    c = ContentCache(str(tmp_path / "nowhere"))
    assert c.prune(0) == (0, 0)
    assert c.stats()["entries"] == 0


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(cache_mod.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), "chunked")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == os.path.join(str(tmp_path), "home", ".cache", "chunked")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == os.path.join(str(tmp_path), "home", ".cache", "chunked")
    monkeypatch.setattr(cache_mod.os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == "/var/cache/chunked"


def test_cli_show_and_prune(tmp_path, capsys):
    c = ContentCache(str(tmp_path))
    for i in range(3):
        b = b"entry %d" % i
        c.put(dg(b), b)
    root = str(tmp_path)
    assert main(["cache", "show", "--cache", root, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["entries"] == 3 and doc["bytes"] == 21 and doc["root"] == str(tmp_path)
    assert main(["cache", "show", "--cache", root]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache", root, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["removed"] == 3 and doc["freed"] == 21 and doc["entries"] == 0
    assert main(["cache", "prune", "--cache", root]) == 0
    assert "removed 0 files" in capsys.readouterr().out


def _put_all(root: str, blobs: list[bytes]) -> None:
    c = ContentCache(root)
    for b in blobs:
        c.put(dg(b), b)


def test_concurrent_puts_from_processes(tmp_path):
    import multiprocessing

    blobs = [b"proc-%d" % i * 300 for i in range(30)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_all, args=(str(tmp_path), blobs)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    c = ContentCache(str(tmp_path))
    assert all(c.get(dg(b)) == b for b in blobs)
    assert c.stats()["bytes"] == sum(len(b) for b in blobs)
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith(".tmp-")]
    assert leftovers == []


def test_prune_drops_records_of_deleted_pulls(tmp_path, capsys):
    from chunked import format as fmt
    from chunked.cache.pulls import PullIndex
    from chunked.read.layer import FileInfo

    info = FileInfo(fmt.TocEntry(type="reg", name="a", size=3, digest=dg(b"abc")))
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    kept.mkdir()
    gone.mkdir()
    index = PullIndex(str(tmp_path / "store"))
    index.record(str(kept), [("a", info)])
    index.record(str(gone), [("a", info)])
    gone.rmdir()
    assert main(["cache", "prune", "--cache", str(tmp_path / "store"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pullRecordsRemoved"] == 1
    fresh = PullIndex(str(tmp_path / "store"))
    fresh.load()
    assert fresh.files(dg(b"abc")) == [str(kept / "a")]
