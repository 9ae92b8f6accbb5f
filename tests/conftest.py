"""Shared pytest configuration; real-peer fixtures live in tests/peers.py."""

from tests.peers import podman, registry, registry_repo  # noqa: F401  (fixtures)
