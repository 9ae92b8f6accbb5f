"""Image references as skopeo spells them: ``docker://...`` and ``oci:DIR[:TAG]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chunked.digest import Digest
from chunked.errors import InputError
from chunked.oci.layout import OciRef

DOCKER_HUB_HOST = "registry-1.docker.io"
# Names users write for Docker Hub; the API itself only answers on DOCKER_HUB_HOST.
_HUB_ALIASES = {"docker.io", "index.docker.io", DOCKER_HUB_HOST}

# The grammar of github.com/distribution/reference (docker/distribution reference/regexp.go).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")


@dataclass(frozen=True)
class DockerRef:
    """``docker://HOST/REPO[:TAG|@DIGEST]``, with Docker Hub's defaults already applied."""

    host: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.reference}"
        return f"docker://{self.host}/{self.repository}{suffix}"

    @classmethod
    def parse(cls, text: str) -> DockerRef:
        if not text.startswith("docker://"):
            raise InputError(f"{text!r} is not a docker://HOST/REPO[:TAG] reference")
        rest = text[len("docker://"):]
        if not rest:
            raise InputError(f"{text!r}: no image name given")
        name, at, digest_text = rest.partition("@")
        digest = Digest.parse(digest_text, f"{text!r}: the digest", InputError) if at else None
        tag = None
        # A colon after the last slash is a tag; before it, it was a registry port.
        head, colon, maybe_tag = name.rpartition(":")
        if colon and "/" not in maybe_tag:
            name, tag = head, maybe_tag
            if not _TAG.fullmatch(tag):
                raise InputError(f"{text!r}: invalid tag {tag!r}")
        if tag and at:
            # skopeo refuses these too: which of the two should win is ambiguous.
            raise InputError(f"{text!r}: give either a tag or a digest, not both")
        first, slash, remainder = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, repo = first, remainder
            if not _HOST.fullmatch(host):
                raise InputError(f"{text!r}: invalid registry host {host!r}")
        else:
            host, repo = DOCKER_HUB_HOST, name
        if host in _HUB_ALIASES:
            host = DOCKER_HUB_HOST
            if "/" not in repo:
                repo = f"library/{repo}"
        if not repo:
            raise InputError(f"{text!r}: no repository name given")
        if repo != repo.lower():
            raise InputError(f"{text!r}: repository name must be lowercase")
        for comp in repo.split("/"):
            if not _COMPONENT.fullmatch(comp):
                raise InputError(
                    f"{text!r}: invalid repository name {repo!r} "
                    "(lowercase letters, digits and . _ - separators only)"
                )
        if len(repo) > 255:
            raise InputError(f"{text!r}: repository name longer than 255 characters")
        return cls(host, repo, None if at else (tag or "latest"), digest)


def parse_reference(text: str) -> DockerRef | OciRef:
    """Parse ``docker://...`` or ``oci:DIR[:TAG]``; anything else is an InputError."""
    if text.startswith("docker://"):
        return DockerRef.parse(text)
    if text.startswith("oci:"):
        return OciRef.parse(text)
    if text.startswith("docker:"):
        raise InputError(f"{text!r}: docker references start with docker:// (two slashes)")
    raise InputError(f"{text!r}: unsupported reference (use docker://HOST/REPO[:TAG] or oci:DIR)")
