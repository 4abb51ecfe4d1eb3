#!/usr/bin/env bash
# Build pyxdp's image (contrib/container/Containerfile) with podman, as root, from this source tree:
#   contrib/container/build.sh [TAG]                 (default pyxdp:VERSION)
# The wheels (pyxdp's and its dependencies') are made here with the tree's .venv (scripts/setup.sh), so
# the image build fetches nothing from a package index. BASE=IMAGE builds on that Debian 12 image (e.g.
# debian:bookworm-slim from your image registry); without BASE a Debian 12 root made with mmdebstrap
# from Debian's packages is imported as localhost/pyxdp-base:bookworm (where no image registry is
# reachable, as on the machines this project is built on). RUN steps use chroot isolation, so no
# container runtime or cgroup setup is needed to build.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $(id -u) != 0 ]]; then echo "build.sh: run as root (sudo)" >&2; exit 2; fi
need() { command -v "$1" >/dev/null || { echo "build.sh: $1 is missing: apt-get install $2" >&2; exit 1; }; }
need podman podman
[[ -x .venv/bin/pip ]] || { echo "build.sh: no .venv: run scripts/setup.sh first" >&2; exit 1; }
version=$(.venv/bin/python -c 'import pyxdp; print(pyxdp.__version__)')
tag=${1:-pyxdp:$version}
ctx=$(mktemp -d /tmp/pyxdp-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
step() { printf '== %s\n' "$*"; }
base=${BASE:-}
if [[ -z $base ]]; then
    base=localhost/pyxdp-base:bookworm
    if ! podman image exists "$base"; then
        need mmdebstrap mmdebstrap
        step "a Debian 12 base root (mmdebstrap, minbase, without documentation)"
        # what debian:bookworm-slim leaves out, left out here too
        mmdebstrap --variant=minbase --include=ca-certificates \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
            bookworm "$ctx/base.tar"
        podman import --quiet "$ctx/base.tar" "$base" >/dev/null
        rm -f "$ctx/base.tar"
    fi
fi
step "wheels: pyxdp $version and its dependencies"
.venv/bin/pip wheel --quiet --disable-pip-version-check -w "$ctx/dist" . 2> >(grep -v "^WARNING: Location" >&2)
step "image $tag on $base"
podman build --quiet --isolation=chroot --network=host --build-arg "BASE=$base" \
    -f contrib/container/Containerfile -t "$tag" "$ctx" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
step "built $tag: $((size / 1000000)) MB"
