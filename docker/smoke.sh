#!/usr/bin/env bash
# Build the CPU image and run it as a user would on a locked-down node. Run by hand (it needs a container
# engine), not by CI; docs/hpc.md has the measured results and how to get an engine on a bare machine.
#
#   docker/smoke.sh [BASE_IMAGE [PYTHON_VERSION]] [-- extra docker build arguments]
#   e.g. docker/smoke.sh local/debian:bookworm 3.11 -- --build-arg TORCH_CPU_INDEX_URL= \
#            --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt
#
# Environment: DOCKER (client, default docker; use one client consistently, e.g. DOCKER=/usr/bin/docker), IMAGE (tag, default bids_phydiff:<version>-cpu), SKIP_BUILD=1
# (test an image built before), SHARED (the shared data folder, default ../shared), WORK (scratch folder).
# Every run: a non-root uid without an entry in the image, --read-only root (HOME is therefore unwritable),
# --network none, the input mounted read-only, a tmpfs /tmp. Checks exit codes, validator-clean outputs,
# output modes (0666/0777 & ~umask 022) and that no run wrote into the container's file system.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-}
PYVER=${2:-}
shift $(( $# > 2 ? 2 : $# )) || true
[ "${1:-}" = "--" ] && shift
DOCKER=${DOCKER:-docker}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/bids_phydiff/__init__.py")
IMAGE=${IMAGE:-bids_phydiff:${VERSION}-cpu}
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-$(mktemp -d /tmp/phydiff-smoke.XXXXXX)}
RUNAS=12345:12345
failures=0

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
timed() {  # timed LABEL EXPECTED_RC command...
    local label=$1 want=$2 start rc
    shift 2
    start=$(date +%s)
    set +e
    "$@" > "$WORK/$label.log" 2>&1
    rc=$?
    set -e
    printf '%-22s rc=%-3s %4ss\n' "$label" "$rc" "$(( $(date +%s) - start ))" | tee -a "$WORK/times.txt"
    if [ "$rc" != "$want" ]; then fail "$label: exit $rc (expected $want); tail of $WORK/$label.log:"; tail -20 "$WORK/$label.log" >&2; fi
}
# the locked-down run; extra docker options before the image as "--opt" words, then the app's arguments
run_app() {
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != "::" ]; do opts+=("$1"); shift; done
    shift
    "$DOCKER" run --rm -u "$RUNAS" --read-only --tmpfs /tmp:rw,exec,mode=1777 --network none "${opts[@]}" "$IMAGE" "$@"
}

# ---------------------------------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    build=(--build-arg VARIANT=cpu)
    [ -n "$BASE" ] && build+=(--build-arg "CPU_BASE_IMAGE=$BASE")
    [ -n "$PYVER" ] && build+=(--build-arg "PYTHON_VERSION=$PYVER")
    build+=("$@")

    say "the legacy builder must stop at once with a BuildKit message"
    set +e
    DOCKER_BUILDKIT=0 "$DOCKER" build "${build[@]}" -t bids_phydiff:legacy-check "$REPO" > "$WORK/legacy.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" = 0 ] || ! grep -qi "buildkit" "$WORK/legacy.log"; then
        fail "the legacy builder did not stop with a BuildKit message (exit $rc)"
    fi
    tail -2 "$WORK/legacy.log"

    say "build $IMAGE (BuildKit)"
    timed build 0 env DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "${build[@]}" -t "$IMAGE" "$REPO"
fi
"$DOCKER" image inspect "$IMAGE" --format 'image size: {{.Size}} bytes' | tee -a "$WORK/times.txt"
"$DOCKER" history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110 > "$WORK/history.txt"

say "the CA secret and the build context stay out of the image"
found=$("$DOCKER" run --rm --entrypoint sh "$IMAGE" -c 'env | grep -E "PIP_CERT|REQUESTS_CA_BUNDLE|SSL_CERT_FILE"
    for p in /run/secrets/pip_ca /tmp/bids_phydiff /tmp/docker /opt/venv/bin/pip; do [ -e "$p" ] && echo "$p"; done
    true')
[ -z "$found" ] || fail "found in the image: $found"

# ---------------------------------------------------------------------------------------------------------
say "--help and --version"
timed help 0 run_app :: --help
timed version 0 run_app :: --version
grep -qx "bids_phydiff $VERSION" "$WORK/version.log" || fail "--version printed $(cat "$WORK/version.log")"
# no writable folder at all (no tmpfs /tmp): --version still answers
timed version-no-tmp 0 "$DOCKER" run --rm -u "$RUNAS" --read-only --network none "$IMAGE" --version

say "phantom (4 mm, 3 subjects), made in the image"
mkdir -p "$WORK/phantom" "$WORK/out-phantom" "$WORK/out-real"
chown "$RUNAS" "$WORK/phantom" "$WORK/out-phantom" "$WORK/out-real"
timed phantom 0 run_app -v "$WORK/phantom:/phantom" --entrypoint python :: \
    -m bids_phydiff.phantom /phantom/bids --subjects 3 --resolution 4 --seed 2
printf 'preset: tiny\nmax_steps: 10\nadapter_steps: 3\nbatch_size: 8\nwarmup_steps: 2\nval_every: 5\nval_samples: 8\ncheckpoint_every: 0\n' \
    > "$WORK/train.yml"
chmod a+r "$WORK/train.yml"
phantom=(-v "$WORK/phantom/bids:/data:ro" -v "$WORK/out-phantom:/out" -v "$WORK/train.yml:/train.yml:ro"
         -e TEMPLATEFLOW_HOME=/data/sourcedata/templateflow ::)
common=(/data /out)
flags=(-w /tmp/work --template Phantom --output-resolution 4)

say "participant level on the phantom, in a named container (docker diff afterwards)"
"$DOCKER" rm -f phydiff-smoke >/dev/null 2>&1 || true
timed participant-phantom 0 "$DOCKER" run --name phydiff-smoke -u "$RUNAS" --read-only \
    --tmpfs /tmp:rw,exec,mode=1777 --network none -v "$WORK/phantom/bids:/data:ro" -v "$WORK/out-phantom:/out" \
    -e TEMPLATEFLOW_HOME=/data/sourcedata/templateflow "$IMAGE" "${common[@]}" participant "${flags[@]}" --nprocs 2
# the engine itself adds the mount points of -v targets that the image lacks (A /data, A /out): not the app
changed=$("$DOCKER" diff phydiff-smoke | grep -vx -e 'A /data' -e 'A /out' || true)
"$DOCKER" rm phydiff-smoke >/dev/null
[ -z "$changed" ] || fail "the run changed the container's file system: $changed"

say "group level (tiny) with a tract atlas given by --xtract-atlas (a read-only bind mount), then a synthesis"
atlas=$(ls "$WORK"/phantom/bids/sourcedata/templateflow/tpl-*/tpl-*_atlas-Tracts_dseg.nii.gz | head -1)
timed group 0 run_app -v "$atlas:/atlas/tracts_dseg.nii.gz:ro" "${phantom[@]}" "${common[@]}" group "${flags[@]}" \
    --train-config /train.yml --model-label tiny --val-subjects 03 --xtract-atlas /atlas/tracts_dseg.nii.gz
grep -rqs '"/atlas/tracts_dseg.nii.gz"' "$WORK/out-phantom/models/model-tiny" \
    || fail "the model bundle does not name the atlas given by --xtract-atlas"
timed synthesis 0 run_app "${phantom[@]}" "${common[@]}" participant "${flags[@]}" --participant-label 03 \
    --model /out/models/model-tiny --samples 2 --steps 2 --batch-size 64

say "participant level on real data (sub-xa30)"
timed participant-real 0 run_app -v "$SHARED/data/real-bids:/data:ro" -v "$WORK/out-real:/out" :: \
    /data /out participant -w /tmp/work --participant-label xa30 --nprocs 2

say "outputs: validator-clean, readable by group and others (umask 022)"
for out in out-phantom out-real; do
    timed "validate-$out" 0 run_app -v "$WORK/$out:/out:ro" --entrypoint python :: -c \
        "from bids_phydiff.cli.environment import harden_environment; harden_environment()
from bids_phydiff.bids.validation import validate; print('warnings:', validate('/out'))"
    private=$(find "$WORK/$out" \( -type f ! -perm -0044 \) -o \( -type d ! -perm -0055 \) | head -5)
    [ -z "$private" ] || fail "$out: not readable by group/others: $private"
    printf '%s: %s files, modes: %s\n' "$out" "$(find "$WORK/$out" -type f | wc -l)" \
        "$(find "$WORK/$out" -mindepth 1 -printf '%y%m\n' | sort | uniq -c | tr '\n' ' ')"
done

say "times (seconds)"
cat "$WORK/times.txt"
echo "logs: $WORK"
if [ "$failures" != 0 ]; then echo "$failures check(s) FAILED"; exit 1; fi
echo "all checks passed"
