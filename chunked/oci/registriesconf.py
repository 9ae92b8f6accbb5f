"""containers-registries.conf(5): where an image is pulled from.

Read from ``$CONTAINERS_REGISTRIES_CONF``, else ``/etc/containers/registries.conf`` and
``/etc/containers/registries.conf.d/*.conf`` (version 2 TOML, through tomllib): each
``[[registry]]`` with ``prefix`` (else ``location``), ``location``, ``insecure`` and
``blocked``, and its ``[[registry.mirror]]`` entries with ``location``, ``insecure`` and
``pull-from-mirror``. The entry with the longest prefix matching ``host/repository`` at a
path boundary applies, as in containers/image. Short-name aliases and
``unqualified-search-registries`` are not read: every reference here is fully qualified.
"""

from __future__ import annotations

import glob
import logging
import os
import tomllib
from dataclasses import dataclass

from chunked.errors import InputError

log = logging.getLogger("chunked.registries")

SYSTEM_CONF = "/etc/containers/registries.conf"
_PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str  # "host[:port][/repo...]", as matched against "host/repository"
    location: str = ""
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """One place to pull a repository from: a mirror, or the registry itself."""

    host: str
    repository: str
    insecure: bool
    mirror: bool


def _files() -> list[str]:
    env = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if env:
        return [env]
    return [SYSTEM_CONF, *sorted(glob.glob(SYSTEM_CONF + ".d/*.conf"))]


def _mirrors(path: str, items: object) -> tuple[Mirror, ...]:
    out = []
    for m in items if isinstance(items, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("location"), str):
            log.warning("%s: a [[registry.mirror]] without a location: ignored", path)
            continue
        pull = m.get("pull-from-mirror", "all")
        if pull not in _PULL_FROM_MIRROR:
            log.warning("%s: mirror %s: pull-from-mirror %r: ignored", path, m["location"], pull)
            continue
        out.append(Mirror(m["location"], m.get("insecure") is True, pull))
    return tuple(out)


def load(paths: list[str] | None = None) -> list[RegistryEntry]:
    """Every ``[[registry]]`` entry, a later file's entry replacing an earlier one with the
    same prefix; a file that cannot be read or parsed costs a warning, not the command."""
    by_prefix: dict[str, RegistryEntry] = {}
    for path in _files() if paths is None else paths:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("%s: ignored: %s", path, exc)
            continue
        regs = doc.get("registry", [])
        for reg in regs if isinstance(regs, list) else []:
            if not isinstance(reg, dict):
                continue
            location = reg.get("location") if isinstance(reg.get("location"), str) else ""
            prefix = reg.get("prefix") or location
            if not isinstance(prefix, str) or not prefix:
                continue
            by_prefix[prefix] = RegistryEntry(
                prefix, location or prefix, reg.get("insecure") is True,
                reg.get("blocked") is True, _mirrors(path, reg.get("mirror")))
    return list(by_prefix.values())


def find(host: str, repository: str, entries: list[RegistryEntry]) -> RegistryEntry | None:
    """The entry with the longest prefix matching ``host/repository`` at a path boundary."""
    name = f"{host}/{repository}"
    best: RegistryEntry | None = None
    for e in entries:
        p = e.prefix.rstrip("/")
        if (name == p or name.startswith(p + "/") or host == p) and \
                (best is None or len(p) > len(best.prefix.rstrip("/"))):
            best = e
    return best


def insecure(host: str, repository: str = "") -> bool:
    entry = find(host, repository, load())
    return entry is not None and entry.insecure


def tls_verify(host: str, repository: str, asked: bool) -> bool:
    """Whether to require HTTPS for a registry: as asked (``--tls-verify``), unless
    registries.conf calls the registry insecure, as podman and skopeo read it."""
    return asked and not insecure(host, repository)


def _rewrite(host: str, repository: str, prefix: str, location: str) -> tuple[str, str]:
    """``host/repository`` with its ``prefix`` replaced by ``location``."""
    name = f"{host}/{repository}"
    p = prefix.rstrip("/")
    rest = name[len(p):] if name.startswith(p) else "/" + repository
    new = location.rstrip("/") + rest
    new_host, _, new_repo = new.partition("/")
    return new_host, new_repo


def endpoints(host: str, repository: str, *, by_digest: bool, tls_verify: bool = True
              ) -> list[Endpoint]:
    """Where to pull ``host/repository`` from, in order: its mirrors (those whose
    ``pull-from-mirror`` allows a pull by digest or by tag, as this one is), then the
    registry itself. An :class:`InputError` when registries.conf blocks it."""
    entry = find(host, repository, load())
    if entry is None:
        return [Endpoint(host, repository, not tls_verify, False)]
    if entry.blocked:
        raise InputError(f"registry {host}: {host}/{repository} is blocked by "
                         "registries.conf (blocked = true)")
    out = []
    for m in entry.mirrors:
        if (m.pull_from_mirror == "digest-only" and not by_digest) or \
                (m.pull_from_mirror == "tag-only" and by_digest):
            continue
        mh, mr = _rewrite(host, repository, entry.prefix, m.location)
        out.append(Endpoint(mh, mr, m.insecure or not tls_verify, True))
    oh, orr = _rewrite(host, repository, entry.prefix, entry.location)
    out.append(Endpoint(oh, orr, entry.insecure or not tls_verify, False))
    return out
