#!/usr/bin/env bash
# Build the image the `docker` sandbox backend runs: Python 3 + SymPy + sandbox/worker.py.
#
#   sandbox/build_image.sh [--base IMAGE] [--tag TAG] [--suite SUITE] [--mirror URL] [--force]
#
# No image registry is reachable on the machines this project targets, so nothing is pulled:
#   * without --base: debootstrap a minbase root filesystem of the host's release (bookworm on the
#     dev machines) with python3 + python3-sympy from the apt mirror this host already uses, and
#     `docker import` it as agentic-gcpo-sandbox-rootfs:SUITE (cached: kept for the next build);
#   * with --base IMAGE: start from a local image the user already has (it must provide python3
#     with SymPy importable; this is checked).
# Then the worker is COPIED into the image (/opt/agentic-gcpo/worker.py, root-owned, read-only for
# the sandbox user) with `docker create` + `docker cp` + `docker commit`. We copy rather than
# bind-mount so the image also works with a daemon that does not share this host's filesystem;
# the image carries the worker's sha256 as a label and the client refuses an image whose worker
# differs from the installed package's (rebuild with this script). `docker build` is not used: it
# needs buildx or the deprecated legacy builder depending on the docker CLI version.
#
# Idempotent: when TAG already holds this worker, recipe and base, it prints so and does nothing.
set -euo pipefail

RECIPE=1 # bump when the layout of the image changes (paths, user, labels)
TAG="agentic-gcpo-sandbox:latest"
BASE=""
SUITE=""
MIRROR=""
FORCE=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
say() { printf '[build_image] %s\n' "$*"; }
die() {
    printf '[build_image] error: %s\n' "$*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --base) BASE="${2:?--base needs an image}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a tag}"; shift 2 ;;
    --suite) SUITE="${2:?--suite needs a release name}"; shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a URL}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKER="$HERE/worker.py"
[ -f "$WORKER" ] || die "worker not found at $WORKER"
command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install -y docker.io)"
docker info >/dev/null 2>&1 || die "the docker daemon is not reachable: start it (e.g. 'dockerd > /tmp/dockerd.log 2>&1 &')"

WORKER_SHA="$(sha256sum "$WORKER" | cut -d' ' -f1)"
t_start=$(date +%s)

# Read a label of a local image; empty when the image or the label is absent.
label() {
    local v
    v="$(docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true)"
    [ "$v" = "<no value>" ] && v=""
    printf '%s' "$v"
}

# ---------------------------------------------------------------------------- base image
if [ -n "$BASE" ]; then
    docker image inspect "$BASE" >/dev/null 2>&1 ||
        die "base image '$BASE' is not present locally (no registry can be reached; 'docker images' lists what you have)"
    FROM="$BASE"
    say "base: local image $BASE"
else
    # shellcheck disable=SC1091
    . /etc/os-release
    SUITE="${SUITE:-${VERSION_CODENAME:-bookworm}}"
    DISTRO="${ID:-debian}"
    FROM="agentic-gcpo-sandbox-rootfs:$SUITE"
    if [ "$FORCE" = 0 ] && docker image inspect "$FROM" >/dev/null 2>&1; then
        say "rootfs: reusing cached $FROM (--force to rebuild it)"
    else
        command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap), or pass --base IMAGE"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        if [ -z "$MIRROR" ]; then
            # The mirror apt already uses for this suite: deb822 (*.sources) or one-line format.
            MIRROR="$(
                {
                    awk -v s="$SUITE" '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i==s) print u}' \
                        /etc/apt/sources.list.d/*.sources 2>/dev/null || true
                    awk -v s="$SUITE" '$1=="deb" && $0 !~ /\[/ && $3==s {print $2} $1=="deb" && $0 ~ /\[/ {for(i=1;i<=NF;i++) if($i==s) print $(i-1)}' \
                        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
                } | head -n1
            )"
            [ -n "$MIRROR" ] || die "no apt mirror for suite '$SUITE' in /etc/apt/sources.list*; pass --mirror URL"
        fi
        COMPONENTS=main
        [ "$DISTRO" = ubuntu ] && COMPONENTS=main,universe # python3-sympy lives in universe there
        ROOTFS="$(mktemp -d /tmp/agcpo-rootfs-XXXXXX)"
        trap 'rm -rf "$ROOTFS"' EXIT
        say "rootfs: debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS (about a minute)"
        debootstrap --variant=minbase --components="$COMPONENTS" --include=python3,python3-sympy \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 ||
            {
                tail -n 20 "$ROOTFS.log" >&2
                die "debootstrap failed (full log: $ROOTFS.log)"
            }
        rm -f "$ROOTFS.log"
        # Nothing the sandbox needs: package caches, docs, man pages, locales (keeps the image ~40% smaller).
        rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
            "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*
        find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} + 2>/dev/null || true
        say "rootfs: docker import -> $FROM"
        tar -C "$ROOTFS" --numeric-owner -c . | docker import \
            --change 'CMD ["/bin/sh"]' --message "agentic-gcpo sandbox rootfs ($DISTRO $SUITE minbase + python3-sympy)" \
            - "$FROM" >/dev/null
        rm -rf "$ROOTFS"
        trap - EXIT
    fi
fi
FROM_ID="$(docker image inspect -f '{{.Id}}' "$FROM")"

# ---------------------------------------------------------------------------- idempotence
if [ "$FORCE" = 0 ] && [ "$(label "$TAG" agentic-gcpo.worker-sha256)" = "$WORKER_SHA" ] &&
    [ "$(label "$TAG" agentic-gcpo.recipe)" = "$RECIPE" ] && [ "$(label "$TAG" agentic-gcpo.base-id)" = "$FROM_ID" ]; then
    say "up to date: $TAG already holds worker sha256 ${WORKER_SHA:0:12} on $FROM; nothing to do"
    exit 0
fi

# ---------------------------------------------------------------------------- add the worker
say "checking that $FROM has python3 with SymPy"
docker run --rm --network none --entrypoint "" "$FROM" python3 -c 'import sympy, sys; print("python", sys.version.split()[0], "sympy", sympy.__version__)' ||
    die "image $FROM cannot run 'python3 -c \"import sympy\"'; use a base image with python3 and SymPy"

STAGE="$(mktemp -d /tmp/agcpo-stage-XXXXXX)"
CID=""
cleanup() {
    rm -rf "$STAGE"
    [ -n "$CID" ] && docker rm -f "$CID" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mkdir -p "$STAGE/opt/agentic-gcpo" "$STAGE/work"
cp "$WORKER" "$STAGE/opt/agentic-gcpo/worker.py"
chmod 0755 "$STAGE/opt" "$STAGE/opt/agentic-gcpo"
chmod 0644 "$STAGE/opt/agentic-gcpo/worker.py"
chmod 1777 "$STAGE/work" # mount point of the per-container tmpfs

CID="$(docker create --entrypoint "" "$FROM" /bin/true)"
# The tar stream makes the files root-owned whatever uid runs this script.
tar -C "$STAGE" --owner=0 --group=0 --numeric-owner -c opt work | docker cp - "$CID:/"
say "committing $TAG (worker sha256 ${WORKER_SHA:0:12})"
docker commit \
    --change 'USER 65534:65534' \
    --change 'WORKDIR /work' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
    --change 'CMD ["python3", "-s", "-B", "/opt/agentic-gcpo/worker.py"]' \
    --change "LABEL agentic-gcpo.worker-sha256=$WORKER_SHA agentic-gcpo.recipe=$RECIPE agentic-gcpo.base=$FROM agentic-gcpo.base-id=$FROM_ID" \
    --message "agentic-gcpo sandbox: worker added to $FROM" \
    "$CID" "$TAG" >/dev/null

say "done in $(($(date +%s) - t_start)) s: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
