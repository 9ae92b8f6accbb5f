#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules where a wrong line costs most: the wire format,
# the chunker, the reader and its consistency checks, the destination's path safety and
# the pull's verification. It prints each module's score: the share of its mutants that
# the fast tests kill.
#
#   bash scripts/mutation.sh                 # every module below (about an hour on 2 cores)
#   bash scripts/mutation.sh chunked/format/chunking.py ...   # some of them
#
# Not part of CI: it runs the fast tests once per mutant. Work happens in a scratch copy
# ($CHUNKED_MUTATION_DIR, default /tmp/chunked-mutation), so the checkout is never
# rewritten; the survivors are listed in $CHUNKED_MUTATION_DIR/survivors.txt, and
# `cd $CHUNKED_MUTATION_DIR && ../path/.venv/bin/mutmut show NAME` shows one.
#
# CHUNKED_MUTATION_TESTS="tests/a.py tests/b.py" replaces the tests listed below (a quick
# look while writing tests; the scores reported come from the lists here), and
# CHUNKED_VENV names another checkout's virtualenv (a git worktree has none).
# CHUNKED_MUTATION_SAMPLE=N runs N mutants per module drawn at random instead of all (an
# estimate: how an older state of the tests scored, when a full run would take hours).
# CHUNKED_MUTATION_JOBS (default 2) is how many mutants run at once.
#
# scripts/mutation-survivors.md explains every mutant the full run leaves alive.
#
# The run sets CHUNKED_PURE_PYTHON=1: where a function has a C twin, the tests then run
# the Python one, which is the one mutated (the C code is tested against it elsewhere).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV=${CHUNKED_VENV:-$ROOT/.venv}  # a git worktree may borrow the main checkout's
PY="$VENV/bin/python"
WORK=${CHUNKED_MUTATION_DIR:-/tmp/chunked-mutation}

DEFAULT_MODULES=(
    chunked/format/__init__.py      # the wire format
    chunked/format/chunking.py      # the chunker
    chunked/read/layer.py           # the reader
    chunked/read/consistency.py     # the TOC against the tar-split
    chunked/puller/destination.py   # the destination's path safety
    chunked/puller/pull.py          # the pull's verification of the tree and DiffIDs
)
# The fast tests (no registry, FUSE or podman) that exercise each module. mutmut runs,
# for each mutant, every listed test that reached the mutated function, so the lists are
# kept to the tests that aim at the module: the hostile-input suite alone would cost
# two minutes per surviving mutant of the TOC parser.
tests_for() {
    case "$1" in
    chunked/format/__init__.py) echo tests/test_format_wire.py tests/test_format_encode.py \
        tests/test_tocindex.py tests/test_consistency.py tests/test_vectors.py tests/test_digest.py ;;
    chunked/format/chunking.py) echo tests/test_chunking.py tests/test_format_encode.py \
        tests/test_vectors.py ;;
    chunked/read/layer.py) echo tests/test_layer_read.py tests/test_layer_protocol.py \
        tests/test_consistency.py tests/test_image.py ;;
    chunked/read/consistency.py) echo tests/test_consistency.py tests/test_layer_read.py ;;
    chunked/puller/destination.py) echo tests/test_destination.py tests/test_pull_local.py ;;
    chunked/puller/pull.py) echo tests/test_pull_verify.py tests/test_pull_local.py ;;
    *) echo "mutation: no tests listed for $1" >&2; return 2 ;;
    esac
}
MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=("${DEFAULT_MODULES[@]}")

[ -x "$PY" ] || { echo "mutation: no $VENV; run bash scripts/setup.sh first" >&2; exit 2; }
"$PY" -c 'import mutmut' 2>/dev/null || "$PY" -m pip install -q 'mutmut==3.8.1'
for m in "${MODULES[@]}"; do
    [ -f "$m" ] || { echo "mutation: no such module: $m" >&2; exit 2; }
done
wanted=()
for m in "${MODULES[@]}"; do read -ra ts <<<"$(tests_for "$m")"; wanted+=("${ts[@]}"); done
[ -z "${CHUNKED_MUTATION_TESTS:-}" ] || read -ra wanted <<<"$CHUNKED_MUTATION_TESTS"
present=()
for t in $(printf '%s\n' "${wanted[@]}" | sort -u); do [ -f "$t" ] && present+=("$t"); done

# A fresh copy of what git tracks, the working tree's edits included, and the built
# extensions; ../shared (the upstream vectors) is seen from mutmut's own copy in mutants/.
rm -rf "$WORK"
mkdir -p "$WORK"
git ls-files -co --exclude-standard | grep -v '^fixtures/rootfs.tar$' |
    while read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done |
    tar -cf - -T - | tar -xf - -C "$WORK"
find chunked -name '*.so' -exec cp --parents {} "$WORK" \;
[ -d "$ROOT/../shared" ] && ln -sfn "$(cd "$ROOT/../shared" && pwd)" "$WORK/shared"

toml_list() { local first=1; printf '['; for x in "$@"; do
    [ $first = 1 ] || printf ', '; first=0; printf '"%s"' "$x"; done; printf ']'; }
cat >>"$WORK/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["chunked"]
only_mutate = $(toml_list "${MODULES[@]}")
pytest_add_cli_args_test_selection = $(toml_list "${present[@]}")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
also_copy = ["fixtures", "fuse", "setup.py"]
EOF

cd "$WORK"
export CHUNKED_PURE_PYTHON=1 CHUNKED_TESTVECTORS="$WORK/shared/testvectors"
echo "mutation: ${MODULES[*]}"
echo "mutation: tests: ${present[*]}"
# A mutant that loops appending (the reader's `n += PIECE` for `n -= PIECE`, say) would
# fill the machine's memory before mutmut's CPU limit (30x the tests' time) stops it:
# with an address-space bound it fails with MemoryError instead, which kills it.
ulimit -v "${CHUNKED_MUTATION_VMEM_KB:-4194304}"
# mutmut's own limit is CPU time; a mutant that waits (a lock never released, a read that
# never ends) uses none and would hang the run. One that outlives a wall-clock bound
# ($CHUNKED_MUTATION_WALL seconds, far above any test file's run) gets the signal the CPU
# limit sends, SIGXCPU, so mutmut counts it as a timeout: a hang the tests caught.
WALL=${CHUNKED_MUTATION_WALL:-300}
( while sleep 10; do
    ps -eo pid=,etimes=,args= | awk -v L="$WALL" '$3 == "mutmut:" && $2 > L {print $1}' |
        xargs -r kill -XCPU 2>/dev/null || true
  done ) &
watchdog=$!
trap 'kill "$watchdog" 2>/dev/null || true' EXIT
# the sample (see the top; seed CHUNKED_MUTATION_SEED, default 1)
sample=()
if [ -n "${CHUNKED_MUTATION_SAMPLE:-}" ]; then
    # A name that matches no mutant: mutmut makes the mutants and maps the tests, then
    # stops, refusing the empty selection (an exit we expect once the .meta files exist).
    "$VENV/bin/mutmut" run 'chunked.none__mutmut_0' >"$WORK/generate.log" 2>&1 || true
    for m in "${MODULES[@]}"; do
        [ -f "mutants/$m.meta" ] || { tail -n 40 "$WORK/generate.log" >&2
            echo "mutation: mutmut made no mutants of $m" >&2; exit 2; }
    done
    mapfile -t sample < <("$PY" - "$CHUNKED_MUTATION_SAMPLE" "${CHUNKED_MUTATION_SEED:-1}" \
            "${MODULES[@]}" <<'PYEOF'
import json
import random
import sys

n, seed = int(sys.argv[1]), int(sys.argv[2])
for module in sys.argv[3:]:
    with open(f"mutants/{module}.meta", encoding="utf-8") as f:
        names = sorted(json.load(f)["exit_code_by_key"])
    print("\n".join(sorted(random.Random(seed).sample(names, min(n, len(names))))))
PYEOF
    )
fi
rc=0
"$VENV/bin/mutmut" run --max-children "${CHUNKED_MUTATION_JOBS:-2}" "${sample[@]}" \
    >"$WORK/run.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
    tail -n 40 "$WORK/run.log" >&2
    echo "mutation: mutmut run failed (exit $rc); log: $WORK/run.log" >&2
    exit "$rc"
fi
"$VENV/bin/mutmut" results --all true >"$WORK/results.txt" 2>&1
"$PY" "$ROOT/scripts/mutation_score.py" "$WORK/results.txt" "${MODULES[@]}" \
    --survivors "$WORK/survivors.txt"
