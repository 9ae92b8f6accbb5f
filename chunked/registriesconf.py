"""containers-registries.conf(5): which registries are insecure.

Read from ``$CONTAINERS_REGISTRIES_CONF``, else ``/etc/containers/registries.conf`` and
``/etc/containers/registries.conf.d/*.conf`` (version 2 TOML). Only ``[[registry]]``'s
``prefix``/``location`` and ``insecure`` are read here; mirrors and short-name aliases are
not (yet).
"""

from __future__ import annotations

import glob
import logging
import os
import tomllib
from dataclasses import dataclass

log = logging.getLogger("chunked.registries")

SYSTEM_CONF = "/etc/containers/registries.conf"


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str  # "host[:port][/repo...]", as matched against "host/repository"
    insecure: bool = False


def _files() -> list[str]:
    env = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if env:
        return [env]
    return [SYSTEM_CONF, *sorted(glob.glob(SYSTEM_CONF + ".d/*.conf"))]


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
        if not isinstance(regs, list):
            continue
        for reg in regs:
            if not isinstance(reg, dict):
                continue
            prefix = reg.get("prefix") or reg.get("location")
            if not isinstance(prefix, str) or not prefix:
                continue
            by_prefix[prefix] = RegistryEntry(prefix, reg.get("insecure") is True)
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
