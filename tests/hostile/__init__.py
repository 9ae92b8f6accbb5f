"""Hostile zstd:chunked layers, and an oracle that judges the ``chunked`` CLI on them.

An attacker controls a layer's bytes and its descriptor: whoever writes a TOC can also make
the ``manifest-checksum`` annotation match it (it is only the sha256 of the compressed TOC).
This package, one job a module:

* :mod:`.wire`: the wire format as the harness reads it (footer, positions, keys), on its
  own rather than through ``chunked.format``, so that it cannot inherit a bug of the code it
  judges;
* :mod:`.base_layers`: the valid layers every mutation starts from;
* :mod:`.resign`: takes a valid blob of :func:`chunked.builder.build_blob` apart (data
  frames, TOC, tar-split, footer), lets a mutation rewrite any part and re-signs the result,
  so every check that compares the layer only with itself still passes (:func:`assemble`);
* :mod:`.named` has one deterministic case for every problem the held-back corpus found
  (:data:`NAMED`) and :mod:`.randomized` seeded random cases in seven classes
  (:data:`CLASSES`, :func:`random_case`);
* :mod:`.cases` writes a case as a blob plus descriptor and as a one-image OCI layout
  (:func:`write_case`), and :mod:`.truth` builds what GNU tar extracts from the layer's
  plain decompression: the only truth the oracle trusts (:func:`load_case`);
* :mod:`.runner` runs each CLI command on a case in a sandbox of its own (:mod:`.sandbox`,
  :mod:`.process`) and classifies the outcome as ok, refused or failed (:class:`Runner`,
  :mod:`.judge`).

``python -m tests.hostile walk ROOT CAP`` (:mod:`.__main__`) is the reader used under a FUSE
mount: it runs in a process of its own, so a hung mount costs a timeout, not the harness.

Every public name of the package is re-exported here (and ``_base_blob``, which a test
uses), so ``from tests import hostile`` sees what the single module offered.
"""

from __future__ import annotations

from tests.hostile.base_layers import (
    HELLO,
    HELLO_NAME,
    OTHER,
    LayerBlob,
    _base_blob,
    base_tar,
    build,
    plain_layer,
    tar_of,
)
from tests.hostile.cases import (
    CHEAP,
    COMMANDS,
    TAG,
    Case,
    CaseDir,
    load_case,
    remove_tree,
    write_case,
)
from tests.hostile.judge import (
    FAILED,
    OK,
    REFUSED,
    SKIPPED,
    UNCHECKED_WARNING,
    Outcome,
    compare_served,
    compare_trees,
    judge_exit,
    traceback_summary,
)
from tests.hostile.named import (
    BOMBS,
    EVERY_COMMAND,
    FULL,
    NAMED,
    SMALL,
    ZEROS_6GIB_DIGEST,
    Sizes,
    named_case,
)
from tests.hostile.process import REPO, Run, cli_env, run_process
from tests.hostile.randomized import (
    CLASSES,
    HARDLINK_OUT,
    MTIME,
    ODD_NAMES,
    SYMLINK_OUT,
    TOC_KEYS,
    VALUES,
    random_case,
    rc_footer_annotation_lies,
    rc_link_tricks,
    rc_lying_offsets,
    rc_odd_names_digests,
    rc_random_toc,
    rc_tarsplit_lies,
    rc_type_confusion,
)
from tests.hostile.resign import Assembly, Parts, Signing, assemble
from tests.hostile.runner import Limits, Runner
from tests.hostile.sandbox import ABS_CANARY, Sandbox, is_mounted
from tests.hostile.truth import FINE_PIECE, FINE_SPAN, Node, Plain, Tree, rooted_clean, walk
from tests.hostile.wire import (
    GZIP_MEDIA,
    MAGIC_CURRENT,
    MAGIC_OLD,
    NEW,
    OLD,
    SKIPPABLE_MAGIC,
    TAR_MEDIA,
    U64,
    ZSTD_MEDIA,
    Footer,
    Pos,
    b64,
    sha,
    skippable,
    toc_json,
    unzstd,
    zstd,
)

__all__ = [
    "ABS_CANARY",
    "Assembly",
    "BOMBS",
    "CHEAP",
    "CLASSES",
    "COMMANDS",
    "Case",
    "CaseDir",
    "EVERY_COMMAND",
    "FAILED",
    "FINE_PIECE",
    "FINE_SPAN",
    "FULL",
    "Footer",
    "GZIP_MEDIA",
    "HARDLINK_OUT",
    "HELLO",
    "HELLO_NAME",
    "LayerBlob",
    "Limits",
    "MAGIC_CURRENT",
    "MAGIC_OLD",
    "MTIME",
    "NAMED",
    "NEW",
    "Node",
    "ODD_NAMES",
    "OK",
    "OLD",
    "OTHER",
    "Outcome",
    "Parts",
    "Plain",
    "Pos",
    "REFUSED",
    "REPO",
    "Run",
    "Runner",
    "SKIPPABLE_MAGIC",
    "SKIPPED",
    "SMALL",
    "SYMLINK_OUT",
    "Sandbox",
    "Signing",
    "Sizes",
    "TAG",
    "TAR_MEDIA",
    "TOC_KEYS",
    "Tree",
    "U64",
    "UNCHECKED_WARNING",
    "VALUES",
    "ZEROS_6GIB_DIGEST",
    "ZSTD_MEDIA",
    "_base_blob",
    "assemble",
    "b64",
    "base_tar",
    "build",
    "cli_env",
    "compare_served",
    "compare_trees",
    "is_mounted",
    "judge_exit",
    "load_case",
    "named_case",
    "plain_layer",
    "random_case",
    "rc_footer_annotation_lies",
    "rc_link_tricks",
    "rc_lying_offsets",
    "rc_odd_names_digests",
    "rc_random_toc",
    "rc_tarsplit_lies",
    "rc_type_confusion",
    "remove_tree",
    "rooted_clean",
    "run_process",
    "sha",
    "skippable",
    "tar_of",
    "toc_json",
    "traceback_summary",
    "unzstd",
    "walk",
    "write_case",
    "zstd",
]
