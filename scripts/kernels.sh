#!/bin/bash
# Boot Debian's own kernel packages in qemu with this machine's root file
# system (read-only, over virtio-9p) and run pyxdp inside each, steps
# (scripts/kernel_checks.py; one line per step in KERNELS.md):
#   programs   each program of the object (xdp_filter, sweep_start, egress) verified alone; the libbpf loaded
#   load       the shipped object at the default rule capacity and at 8,192 rules
#   replay     a pcap with known verdicts (rules, a ban, a malformed frame, ARP, IPv6)
#   native     pyxdp-load attach --mode native on a veth between two namespaces; real packets
#   trace      pyxdp-load trace --json --pcap sees them (ring buffer, packet heads)
#   conntrack  the egress program: connections the guarded namespace opens, under policy drop
#   pytest     tests/kernel/test_verdicts.py tests/kernel/test_model.py tests/kernel/test_conntrack.py
# While a guest runs, each step is printed on stderr as it starts and ends ("-- ROW: STEP started",
# "-- ROW: STEP ended, rc=0 secs=N"; the boot too), so a person and CI's log see where a run is;
# then print a table kernel -> libbpf -> result -> first error line and write it to
# $CACHE/results.md (KERNELS.md is that file, committed by hand).
#
#   sudo bash scripts/kernels.sh                 # every row of KERNELS below (~24 min under TCG here)
#   sudo bash scripts/kernels.sh 6.1 6.12        # only these rows (LABEL: the host's libbpf; LABEL+libbpf-SUITE)
#   sudo bash scripts/kernels.sh --quick         # CI's part: programs, load, replay, test_verdicts.py on the
#                                                # oldest and newest kernel expected to pass (also QUICK=1)
#   sudo bash scripts/kernels.sh --head ...      # test the last commit (git archive HEAD), not the work tree
#   bash scripts/kernels.sh --report [--quick]   # the table of the last results, nothing booted
#   sudo bash scripts/kernels.sh --arch arm64    # Debian's arm64 kernels (KERNELS_ARM64) in qemu-system-aarch64
#                                                # (-M virt -cpu max, TCG) on an arm64 Debian 12 root built once
#                                                # with mmdebstrap + qemu-user (python3, libbpf1, a venv at
#                                                # /opt/pyxdp with the project's wheel and its deps); own
#                                                # rows/results (results-arm64.md); --quick etc. as above
#
# The guest runs a copy of the tree's pyxdp/ and tests/ made at start (the
# work tree's, or HEAD's with --head), so edits during a run do not mix in.
# Idempotent: kernel and libbpf packages are fetched once with `apt-get download` through
# a private apt configuration (its own sources file, lists and cache under
# $CACHE; the host's apt sources and lists are not touched; the temporary
# sources file is removed on exit). Extracted kernels, libbpf.so.1 files, initramfs images and
# serial logs stay in $CACHE (default /var/cache/pyxdp-kernels; made when missing).
# KVM is used when PYXDP_KVM=1 (and /dev/kvm works), TCG otherwise (~90 s a boot).
# Exit status: non-zero when a row expected to pass fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PYXDP_KERNEL_CACHE:-/var/cache/pyxdp-kernels}
VENV=${PYXDP_VENV:-$ROOT/.venv}
MEM=${PYXDP_VM_MEM:-3G}
TIMEOUT=${PYXDP_VM_TIMEOUT:-2400}    # seconds for one whole boot + run
QUICK=${QUICK:-0}
HEAD=0 REPORT=0 LABELS=() ARCH=amd64
while [ $# -gt 0 ]; do
    a=$1; shift
    case $a in
        --quick) QUICK=1 ;;
        --head) HEAD=1 ;;
        --report) REPORT=1 ;;
        --arch=*) ARCH=${a#--arch=} ;;
        --arch) ARCH=${1:-}; shift || true ;;
        -*) echo "kernels.sh: unknown option $a" >&2; exit 2 ;;
        *) LABELS+=("$a") ;;
    esac
done
case $ARCH in
    amd64|x86_64) ARCH=amd64 ;;
    arm64|aarch64) ARCH=arm64 ;;
    *) echo "kernels.sh: --arch: amd64 or arm64, not '$ARCH'" >&2; exit 2 ;;
esac
[ "$QUICK" = 1 ] || QUICK=0
if [ "$QUICK" = 1 ]; then
    STEPS="programs load-default load-8192 replay pytest"
    PYTEST_FILES="tests/kernel/test_verdicts.py"
    ROWS=$CACHE/rows-quick RESULTS=$CACHE/results-quick.md
    TIMEOUT=${PYXDP_VM_TIMEOUT:-1200}
else
    STEPS="programs load-default load-8192 replay native trace conntrack pytest"
    PYTEST_FILES="tests/kernel/test_verdicts.py tests/kernel/test_model.py tests/kernel/test_conntrack.py"
    ROWS=$CACHE/rows RESULTS=$CACHE/results.md
fi
# arm64: its own rows and results, apt lists, debs and kernels (package names and busybox differ)
SUB=
if [ "$ARCH" = arm64 ]; then SUB=-arm64 ROWS=$ROWS$SUB RESULTS=${RESULTS%.md}$SUB.md; fi
PYTEST_ARGS=${PYXDP_PYTEST_ARGS:-"-q --color=no -p no:cacheprovider $PYTEST_FILES"}
# the model tests' Hypothesis examples in the guest (the host's suite runs 150 and 100; TCG is ~7x slower)
RULE_EXAMPLES=${PYXDP_RULE_EXAMPLES:-60}
MODEL_EXAMPLES=${PYXDP_MODEL_EXAMPLES:-40}

# label  suite the linux-image-amd64 comes from  expectation (pass | fail: documented unsupported)  libbpf
# (host: the host's libbpf.so.1; a suite: that suite's libbpf1 package, loaded through PYXDP_LIBBPF)
KERNELS="
5.10    bullseye-security  fail  host
6.1     bookworm-security  pass  host
6.12    trixie-security    pass  host
newest  trixie-backports   pass  host
newest  trixie-backports   pass  trixie
newest  trixie-backports   pass  bookworm-backports
"
# --arch arm64: linux-image-arm64; libbpf "root": the arm64 root's libbpf1 (Debian 12's)
KERNELS_ARM64="
6.1     bookworm-security  pass  root
"
LIBHOST=host
if [ "$ARCH" = arm64 ]; then KERNELS=$KERNELS_ARM64 LIBHOST=root; fi
rowid() { if [ "$2" = host ] || [ "$2" = root ]; then echo "$1"; else echo "$1+libbpf-$2"; fi; }  # LABEL LIBBPF-SOURCE
# --quick without labels: the oldest and the newest row expected to pass with the host's libbpf
if [ "$QUICK" = 1 ] && [ ${#LABELS[@]} = 0 ]; then
    LABELS=($(awk -v h="$LIBHOST" '$3 == "pass" && $4 == h {print $1}' <<<"$KERNELS" | sed -n '1p;$p' | sort -u))
fi

tree_line() {  # what was tested: the commit (or the work tree), and the object's hash
    local obj=${1:-$ROOT/pyxdp/xdp_filter.bpf.o} what
    what="tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [ "$HEAD" = 1 ]; then what="$what (HEAD; work tree not used)"
    elif ! git -C "$ROOT" diff --quiet HEAD -- pyxdp bpf tests 2>/dev/null; then what="$what (pyxdp/bpf/tests modified)"; fi
    echo "Last run on $what, pyxdp/xdp_filter.bpf.o sha256 $(sha256sum "$obj" | cut -c1-16)"
}
# the table: the latest row of every row id, with what was tested
report() {
    local label suite expect lib
    {
        cat "$ROWS/.tree" 2>/dev/null || tree_line
        echo
        echo "Table written $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r) host, $ARCH guests, qemu $($QEMU --version | head -1 | awk '{print $4}'), ${ACCEL%% -cpu*}, python $(pyver)$([ "$QUICK" = 1 ] && echo ', --quick' || true)"
        echo
        echo "| label | date | kernel (Debian version, suite) | libbpf | result | steps (seconds) | boot+run | first error line |"
        echo "|---|---|---|---|---|---|---|---|"
        while read -r label suite expect lib; do
            [ -z "$label" ] || cat "$ROWS/$(rowid "$label" "$lib")" 2>/dev/null || true
        done <<<"$KERNELS"
    } | tee "$RESULTS"
}
ACCEL="-accel tcg -cpu max" QEMU=qemu-system-x86_64
if [ "${PYXDP_KVM:-0}" = 1 ] && [ -w /dev/kvm ]; then ACCEL="-accel kvm -cpu host"; fi
# arm64: the root the guest boots (built below), its venv as the guest sees it
AROOT=$CACHE/arm64/root
if [ "$ARCH" = arm64 ]; then
    # pauth-impdef: the same pointer authentication with a cheaper algorithm under TCG
    ACCEL="-accel tcg -cpu max,pauth-impdef=on" QEMU=qemu-system-aarch64
fi
pyver() {
    if [ "$ARCH" = arm64 ]; then
        dpkg-query --admindir="$AROOT/var/lib/dpkg" -W -f='${Version} (arm64 root)' python3.11 2>/dev/null || echo '?'
    else "$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'; fi
}
if [ "$REPORT" = 1 ]; then report; exit 0; fi   # print the last results, boot nothing

[ "$(id -u)" = 0 ] || { echo "run as root (apt-get download into $CACHE, guest runs as root)" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || { echo "no $VENV: run scripts/setup.sh --test first" >&2; exit 2; }
# the guest sees this machine's / but mounts tmpfs on /tmp and /run: the cache must lie elsewhere; a
# venv under /tmp (a clone there: CI's may be) is bound back over the guest's tmpfs (KEEP)
KEEP=
for p in "$CACHE" "$VENV" "$(readlink -f "$VENV/bin/python")"; do
    real=$(readlink -m "$p")
    case $real/ in
        /tmp/*) if [ "$p" = "$VENV" ]; then KEEP=$real; continue; fi ;&
        /run/*)
            echo "kernels.sh: $p is under /tmp or /run, which the guest covers with tmpfs; use another place (PYXDP_KERNEL_CACHE, PYXDP_VENV)" >&2
            exit 2 ;;
    esac
done
case $KEEP in *[!A-Za-z0-9._/-]*) echo "kernels.sh: $KEEP: a path the kernel command line cannot carry" >&2; exit 2 ;; esac
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if [ "$ARCH" = arm64 ]; then
    KEEP=   # the guest's venv is in its own root
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    for t in mmdebstrap:mmdebstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support arch-test:arch-test; do
        command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
    done
fi
for t in dpkg-deb:dpkg xz:xz-utils zstd:zstd gzip:gzip; do command -v "${t%%:*}" >/dev/null || need+=("${t#*:}"); done
# as setup.sh installs: no recommends (qemu-system-x86's are a GUI, qemu-utils, ovmf and block drivers:
# ~300 packages, none used by a -kernel boot without display), quiet
if [ ${#need[@]} != 0 ]; then
    echo "kernels.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

DEBS=$CACHE/debs$SUB APTD=$CACHE/apt$SUB KB=$CACHE/k$SUB
mkdir -p "$CACHE"/{logs,libbpf} "$DEBS" "$APTD"/{lists/partial,cache/archives/partial} "$KB" "$ROWS"
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
SRC=$RUN/pyxdp.sources
QEMU_PID=
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The kernels come from this machine's own Debian mirrors (its apt sources name them), with the
# suites below: the archive and its security updates.
mirror() {  # mirror security|archive: the first URI of the host's apt sources of that kind
    local want=$1
    { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | cut -d: -f2- | tr ' ' '\n'
      grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | sed 's/\[[^]]*\]//' | awk '{print $2}'
    } | grep -E '^[a-z]+://' | { if [ "$want" = security ]; then grep security; else grep -v security; fi; } | head -1 \
        || true  # (pipefail: a missing sources.list is no error here; an empty answer is, below)
}
ARCHIVE=$(mirror archive) SECURITY=$(mirror security)
if [ -z "$ARCHIVE" ] || [ -z "$SECURITY" ]; then
    echo "kernels.sh: this machine's apt sources name no Debian archive and security mirror to fetch kernels from" >&2
    exit 1
fi
cat >"$SRC" <<EOF
Types: deb
URIs: $ARCHIVE
Suites: bullseye bookworm bookworm-updates bookworm-backports trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: bullseye-security bookworm-security trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o "Dir::Etc::SourceList=$SRC" -o "Dir::Etc::SourceParts=$RUN/none"
     -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD/cache"
     -o "APT::Sandbox::User=root")
[ "$ARCH" = amd64 ] || APT+=(-o "APT::Architecture=$ARCH" -o "APT::Architectures=$ARCH")
mkdir -p "$RUN/none"
# Refresh the private lists at most once a day, or when the suites above change.
if ! cmp -s "$SRC" "$APTD/sources.used" ||
   [ -z "$(find "$APTD/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    apt-get "${APT[@]}" -q update >/dev/null
    cp "$SRC" "$APTD/sources.used"
fi

fetch() {  # fetch PKG...: into $CACHE/debs unless present
    local p f
    for p in "$@"; do
        f=$(ls "$DEBS"/"${p%%=*}"_*.deb 2>/dev/null | head -1 || true)
        [ -n "$f" ] || (cd "$DEBS" && apt-get "${APT[@]}" -q download "$p" >/dev/null)
    done
}

# busybox (static) for the initramfs
fetch busybox-static
BB=$KB/busybox
[ -x "$BB" ] || { d=$(mktemp -d "$RUN/bb.XXXX"); dpkg-deb -x "$(ls "$DEBS"/busybox-static_*.deb | head -1)" "$d"; cp "$(ls "$d"/bin/busybox "$d"/usr/bin/busybox 2>/dev/null | head -1)" "$BB"; }

# resolve LABEL SUITE -> kernel image package (and split binary/modules packages)
resolve() {
    local suite=$1 ver deps
    ver=$(apt-cache "${APT[@]}" madison linux-image-$ARCH | awk -F'[|]' -v s="$suite" '$3 ~ (" "s"/") {gsub(/ /, "", $2); print $2; exit}')
    [ -n "$ver" ] || return 1
    local img extra deps
    deps=$(apt-cache "${APT[@]}" show "linux-image-$ARCH=$ver" | sed -n 's/^Depends: //p' | head -1)
    img=$(echo "$deps" | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -1)
    # newer packaging splits the image: linux-image-X depends on linux-binary-X and linux-modules-X
    extra=$(apt-cache "${APT[@]}" show "$img" | sed -n 's/^Depends: //p' | head -1 | tr ',' '\n' |
            sed -n 's/^ *\(linux-\(binary\|modules\)-[^ ]*\).*/\1/p' | tr '\n' ' ')
    [ -n "$img" ] || return 1
    echo "$img $extra"
}

# the host's libbpf, or SUITE's libbpf1 extracted into $CACHE/libbpf/VERSION/ (fetched once):
# prints "DEBIAN-VERSION PATH" (PATH empty for the host's)
libbpf_for() {
    local suite=$1 ver dir deb d
    if [ "$suite" = host ]; then echo "$(dpkg-query -W -f='${Version}' libbpf1 2>/dev/null || echo unknown) "; return 0; fi
    if [ "$suite" = root ]; then echo "$(dpkg-query --admindir="$AROOT/var/lib/dpkg" -W -f='${Version}' libbpf1 2>/dev/null || echo unknown) "; return 0; fi
    ver=$(apt-cache "${APT[@]}" madison libbpf1 | awk -F'[|]' -v s="$suite" '$3 ~ (" "s"/") {gsub(/ /, "", $2); print $2; exit}')
    [ -n "$ver" ] || return 1
    dir=$CACHE/libbpf/${ver#*:}
    if [ ! -f "$dir/libbpf.so.1" ]; then
        deb=$DEBS/libbpf1_${ver/:/%3a}_amd64.deb
        [ -f "$deb" ] || (cd "$DEBS" && apt-get "${APT[@]}" -q download "libbpf1=$ver" >/dev/null) || return 1
        d=$(mktemp -d "$RUN/libbpf.XXXX")
        dpkg-deb -x "$deb" "$d" && mkdir -p "$dir" &&
            cp -L "$d/usr/lib/x86_64-linux-gnu/libbpf.so.1" "$dir/libbpf.so.1.tmp" || return 1
        mv "$dir/libbpf.so.1.tmp" "$dir/libbpf.so.1"
        rm -rf "$d"
    fi
    echo "$ver $dir/libbpf.so.1"
}

INIT_VERSION=init3   # bump when /init below changes: a cached initrd.gz is rebuilt
# build $KDIR/initrd.gz: busybox, the modules below (decompressed), /init
MODULES="virtio_pci 9pnet_virtio 9p veth sch_ingress cls_bpf"   # the root over 9p; the veth pair; tc clsact + bpf
mkinitrd() {
    local kdir=$1 kver=$2 ird=$RUN/initrd.$kver m f dep
    local mdir=$kdir/lib/modules/$kver
    rm -rf "$ird"; mkdir -p "$ird"/{bin,mods,proc,sys,dev,newroot}
    cp "$BB" "$ird/bin/busybox"
    : >"$ird/mods/order"
    # resolve dependencies from each module's own "depends=" (no depmod needed); load deps first
    modcat() { case $1 in *.xz) xz -dc "$1" ;; *.zst) zstd -qdc "$1" ;; *.gz) gzip -dc "$1" ;; *) cat "$1" ;; esac; }
    addmod() {
        local name=$1 f b d
        grep -qx "$name.ko" "$ird/mods/order" && return 0
        f=$(find "$mdir/kernel" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -1)
        [ -n "$f" ] || return 0   # built in
        modcat "$f" >"$ird/mods/$name.ko"
        for d in $(grep -a -o 'depends=[^[:cntrl:]]*' "$ird/mods/$name.ko" | head -1 | sed 's/depends=//; s/,/ /g'); do
            addmod "${d//-/_}"
        done
        echo "$name.ko" >>"$ird/mods/order"
    }
    for m in $MODULES; do addmod $m; done
    cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null || echo "initrd: insmod $m failed"; done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 root /newroot; then
    echo "@@FATAL 9p root mount failed"; echo o >/proc/sysrq-trigger; sleep 10
fi
if [ -n "$pyxdp_cache" ] &&   # arm64: the root is its own; the host's cache (the run's tree) at the same path
   ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 cache "/newroot$pyxdp_cache"; then
    echo "@@FATAL 9p cache mount failed"; echo o >/proc/sysrq-trigger; sleep 10
fi
[ -n "$pyxdp_keep" ] && mkdir -p /hosttmp && mount --bind /newroot/tmp /hosttmp
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
if [ -n "$pyxdp_keep" ]; then   # the venv under the host's /tmp, visible again over the tmpfs
    mkdir -p "/newroot$pyxdp_keep" && mount --bind "/hosttmp${pyxdp_keep#/tmp}" "/newroot$pyxdp_keep"
fi
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash "$pyxdp_guest"
EOF
    chmod +x "$ird/init"
    (cd "$ird" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1) >"$kdir/initrd.gz.tmp"
    mv "$kdir/initrd.gz.tmp" "$kdir/initrd.gz"
    echo "$MODULES $INIT_VERSION" >"$kdir/initrd.modules"
    rm -rf "$ird"
}

# ---- arm64: the root the guest boots, built once ----------------------------------------------
# Debian 12 arm64 (mmdebstrap, maintainer scripts under qemu-user), python3, libbpf1, iproute2, tcpdump;
# a venv at /opt/pyxdp with the project's wheel (py3-none-any) and its dependencies' aarch64 wheels,
# downloaded by the host's pip. Rebuilt when ROOT_STAMP changes; the guest mounts it read-only.
ROOT_PKGS=python3,python3-venv,python-is-python3,libbpf1,iproute2,tcpdump,procps,mount
ROOT_REQS="cffi==2.1.1 prometheus_client>=0.16 rich>=13 pytest>=7 hypothesis>=6"
ROOT_STAMP="root2 bookworm $ROOT_PKGS $ROOT_REQS"
build_root() {
    local new=$AROOT.new w=$RUN/wheels
    echo "== arm64 root: building $AROOT (mmdebstrap bookworm + qemu-user; a few minutes)" >&2
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    arch-test arm64 >/dev/null || { echo "kernels.sh: this host cannot run arm64 binaries (qemu-user/binfmt): $(arch-test arm64 2>&1 | tail -1)" >&2; return 1; }
    # the bookworm suites of the sources above
    sed 's/^Suites: .*-security$/Suites: bookworm-security/; s/^Suites: bullseye .*/Suites: bookworm bookworm-updates/' "$SRC" >"$RUN/root.sources"
    rm -rf "$new" "$w"; mkdir -p "$w"
    mmdebstrap --quiet --arch=arm64 --variant=apt --include="$ROOT_PKGS" bookworm "$new" "$RUN/root.sources" >&2 || return 1
    # shellcheck disable=SC2086
    "$VENV/bin/pip" download -q --disable-pip-version-check --only-binary=:all: --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp -d "$w" $ROOT_REQS >&2 || return 1
    "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$w" "$ROOT" >&2 || return 1
    mkdir -p "$new/tmp/wheels" && cp "$w"/*.whl "$new/tmp/wheels/"
    chroot "$new" /usr/bin/python3 -m venv /opt/pyxdp || return 1
    chroot "$new" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp /opt/pyxdp/bin/pip install -q --disable-pip-version-check \
        --no-index --find-links /tmp/wheels "/tmp/wheels/$(cd "$new/tmp/wheels" && ls pyxdp-*.whl)" $ROOT_REQS >&2 || return 1
    rm -rf "$new/tmp/wheels" "$w"
    echo "$ROOT_STAMP" >"$new/.pyxdp-root"
    rm -rf "$AROOT"; mv "$new" "$AROOT"
}
if [ "$ARCH" = arm64 ]; then
    mkdir -p "$(dirname "$AROOT")"
    [ "$(cat "$AROOT/.pyxdp-root" 2>/dev/null)" = "$ROOT_STAMP" ] || build_root || { echo "kernels.sh: the arm64 root could not be built" >&2; exit 1; }
    mkdir -p "$AROOT$CACHE"    # the mount point of the host's cache in the guest
    VENV=/opt/pyxdp            # as the guest sees it
fi

# ---- what the guest runs: a copy of the tree under test, the checks --------------------------
TREE=$RUN/tree
mkdir -p "$TREE"
if [ "$HEAD" = 1 ]; then
    git -C "$ROOT" archive HEAD pyxdp tests | tar -x -C "$TREE"
else
    cp -a "$ROOT/pyxdp" "$ROOT/tests" "$TREE/"
    find "$TREE" -name __pycache__ -prune -exec rm -rf {} +
fi
cp "$ROOT/scripts/kernel_checks.py" "$RUN/checks.py"   # the harness: always the work tree's
TREE_LINE=$(tree_line "$TREE/pyxdp/xdp_filter.bpf.o")
echo "== $TREE_LINE" >&2

cat >"$RUN/guest.sh" <<EOF
# runs as PID 1 in the guest, on the host's root (read-only 9p), tmpfs /tmp and /run
export HOME=/tmp PATH=$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=$TREE PYTHONDONTWRITEBYTECODE=1
export LANG=C.UTF-8 TMPDIR=/tmp HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
export PYXDP_RULE_EXAMPLES=$RULE_EXAMPLES PYXDP_MODEL_EXAMPLES=$MODEL_EXAMPLES
. $RUN/row.env   # PYXDP_LIBBPF of this row, when not the host's
mkdir -p /dev/shm /dev/pts; mount -t tmpfs tmpfs /dev/shm; mount -t devpts devpts /dev/pts
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
cd $TREE
echo "@@KERNEL \$(uname -r) \$(cat /proc/version)"
step() {
    local name=\$1 t0=\$(date +%s); shift
    echo "@@BEGIN \$name"
    timeout ${TIMEOUT} "\$@" </dev/null 2>&1; local rc=\$?
    echo "@@END \$name rc=\$rc secs=\$((\$(date +%s) - t0))"
}
for s in $STEPS; do
    case \$s in
        load-default) step \$s python $RUN/checks.py load ;;
        load-8192) step \$s python $RUN/checks.py load 8192 ;;
        pytest) step \$s python -m pytest $PYTEST_ARGS ;;
        *) step \$s python $RUN/checks.py \$s ;;
    esac
done
echo "@@DONE"
sync; echo o >/proc/sysrq-trigger; sleep 30
EOF

# ---- each row ----------------------------------------------------------------------------------
WANT=" ${LABELS[*]} "
FAILED=0
follow() {  # ROWID LOG QEMU_PID: each step of the guest as it starts and ends (kernel, step, seconds), on
    # stderr as the serial log gets its @@ lines; ends with qemu (tail --pid)
    local id=$1 log=$2 t0 now line rest
    t0=$(date +%s)
    echo "-- $id: boot started" >&2
    tail -n +1 --pid="$3" -F "$log" 2>/dev/null | while IFS= read -r line; do
        line=${line%$'\r'} now=$(date +%s)
        case $line in
            "@@KERNEL "*) echo "-- $id: booted in $((now - t0)) s ($(cut -d' ' -f2 <<<"$line"))" >&2 ;;
            "@@BEGIN "*) echo "-- $id: ${line#@@BEGIN } started (at $((now - t0)) s)" >&2 ;;
            "@@END "*) rest=${line#@@END }
                       echo "-- $id: ${rest%% *} ended, ${rest#* } (at $((now - t0)) s)" >&2 ;;
            "@@DONE"*) echo "-- $id: all steps done in $((now - t0)) s" >&2 ;;
        esac
    done
}

row() {  # ROWID FIELDS...: one table row, into $ROWS/ROWID
    local id=$1 out="| $1" f; shift
    for f in "$@"; do out="$out | $f"; done
    echo "$out |" | tee "$ROWS/$id" >&2
}
while read -r label suite expect libsrc; do
    [ -n "$label" ] || continue
    id=$(rowid "$label" "$libsrc")
    [ "$WANT" = "  " ] || [[ $WANT == *" $id "* ]] || continue
    echo "$TREE_LINE" >"$ROWS/.tree"
    # the libbpf: the host's, or a suite's; one that cannot be loaded here is reported, not booted
    lib=$(libbpf_for "$libsrc") || { row "$id" "$(date -u +%F)" "(not booted)" "(no libbpf1 in $libsrc)" "not run" "" "" ""; FAILED=1; continue; }
    libver=${lib%% *} libpath=${lib#* }
    libcol="$libver ($libsrc)"
    if [ -n "$libpath" ]; then
        why=$("$VENV/bin/python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$libpath" 2>&1 | tail -1) || {
            row "$id" "$(date -u +%F)" "(not booted)" "$libcol" "not run" "" "" "cannot load on this host ($(ldd --version | head -1 | awk '{print "glibc " $NF}')): ${why//|/\\|}"
            continue; }
        echo "export PYXDP_LIBBPF=$libpath" >"$RUN/row.env"
    else
        : >"$RUN/row.env"
    fi
    pkgs=$(resolve "$suite") || { echo "$label: no linux-image-$ARCH in $suite" >&2; row "$id" "$(date -u +%F)" "(not found in $suite)" "$libcol" "not run" "" "" ""; FAILED=1; continue; }
    img=${pkgs%% *}
    [[ $img == linux-image-?* ]] || { echo "$label: cannot resolve the image package in $suite" >&2; FAILED=1; continue; }
    fetch $pkgs
    kver=${img#linux-image-}
    kdir=$KB/$kver
    if [ ! -f "$kdir/.extracted" ]; then
        rm -rf "$kdir"; mkdir -p "$kdir"
        for p in $pkgs; do dpkg-deb -x "$(ls "$DEBS"/"$p"_*.deb | head -1)" "$kdir"; done
        [ -d "$kdir/lib/modules/$kver" ] || { [ -d "$kdir/usr/lib/modules/$kver" ] && mkdir -p "$kdir/lib" && ln -s ../usr/lib/modules "$kdir/lib/modules"; }
        touch "$kdir/.extracted"
    fi
    [ -f "$kdir/initrd.gz" ] && [ "$(cat "$kdir/initrd.modules" 2>/dev/null)" = "$MODULES $INIT_VERSION" ] || mkinitrd "$kdir" "$kver"
    # boot/vmlinuz-KVER (<= 6.x packaging) or usr/lib/modules/KVER/vmlinuz (linux-binary-*, 7.x)
    vmlinuz=$(ls "$kdir"/boot/vmlinuz-* "$kdir"/usr/lib/modules/"$kver"/vmlinuz 2>/dev/null | head -1 || true)
    [ -n "$vmlinuz" ] || { echo "$label: no vmlinuz in $pkgs" >&2; FAILED=1; continue; }
    debver=$(dpkg-deb -f "$(ls "$DEBS"/"$img"_*.deb | head -1)" Version)
    log=$CACHE/logs/$kver${libpath:+.libbpf-$libsrc}.log
    [ "$QUICK" = 0 ] || log=${log%.log}.quick.log
    echo "== $id: $img $debver ($suite), libbpf $libcol, steps: $STEPS; log $log" >&2
    start=$(date +%s)
    rm -f "$log"  # the follower reads it from its first line
    if [ "$ARCH" = arm64 ]; then
        $QEMU $ACCEL -machine virt -m "$MEM" -smp 2 -nodefaults -no-reboot -display none \
            -serial "file:$log" -monitor none \
            -kernel "$vmlinuz" -initrd "$kdir/initrd.gz" \
            -append "console=ttyAMA0 quiet loglevel=3 panic=-1 pyxdp_guest=$RUN/guest.sh pyxdp_cache=$CACHE" \
            -virtfs local,path="$AROOT",mount_tag=root,security_model=none,readonly=on,multidevs=remap \
            -virtfs local,path="$CACHE",mount_tag=cache,security_model=none,readonly=on,multidevs=remap &
    else
    qemu-system-x86_64 $ACCEL -machine q35 -m "$MEM" -smp 2 -nodefaults -no-reboot -display none \
        -serial "file:$log" -monitor none \
        -kernel "$vmlinuz" -initrd "$kdir/initrd.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pyxdp_guest=$RUN/guest.sh${KEEP:+ pyxdp_keep=$KEEP}" \
        -virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap &
    fi
    QEMU_PID=$!
    ( sleep "$TIMEOUT"; kill "$QEMU_PID" 2>/dev/null ) & watchdog=$!
    follow "$id" "$log" "$QEMU_PID" & follower=$!
    wait "$QEMU_PID" || true
    wait "$follower" 2>/dev/null || true
    QEMU_PID=
    kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null || true
    secs=$(( $(date +%s) - start ))
    # per step: rc, seconds and the first error line (a failed check, verifier cause, exception, failed test)
    summary=$(tr -d '\r' <"$log" | awk '
        /^@@BEGIN / {step=$2; first=""; sfirst=""; next}
        /^@@END /   {rc=$3; sub(/rc=/,"",rc); t=$4; sub(/secs=/,"",t); r[step]=rc; sec[step]=t
                     if (rc!=0) e[step]=(sfirst!="" ? sfirst : first); order=order" "step; step=""; next}
        step=="pytest" && sfirst=="" && /^(FAILED|ERROR) tests/ {sfirst=$0}
        step!="" && step!="pytest" && sfirst=="" && /^FAILED: / {sfirst=$0}
        step!="" && first=="" && /(not supported|[Ii]nvalid|unknown func|[Pp]ermission|[Ee]rror|FAILED|failed|Traceback|rejected|cannot|Errno)/ {
            if ($0 !~ /^Traceback/) first=$0 }
        step!="" && /^[A-Za-z_.]+(Error|Exception): / && first=="" {first=$0}
        step=="pytest" && /(passed|failed|error|errors)( ,|,| in [0-9.]+s)/ {pyline=$0; gsub(/=/,"",pyline); gsub(/^ +| +$/,"",pyline)}
        END {
            out=""; err=""
            n=split(order, s, " ")
            for (i=1;i<=n;i++) { k=s[i]; out=out k "=" (r[k]==0?"ok":"FAIL(" r[k] ")") "(" sec[k] ") "; if (r[k]!=0 && err=="") err=k ": " e[k] }
            if (pyline!="") out=out "[pytest: " pyline "]"
            printf "%s\t%s\n", out, err
        }')
    steps=${summary%%$'\t'*}; err=${summary#*$'\t'}
    if grep -q '^@@DONE' <(tr -d '\r' <"$log") && ! grep -q 'FAIL' <<<"$steps"; then result=pass; else result=fail; fi
    grep -q '^@@DONE' <(tr -d '\r' <"$log") || { err=${err:-"guest did not finish (see $log)"}; steps="${steps:-none} (incomplete)"; }
    # the libbpf the guest loaded (the programs step fails when it is not the one asked for)
    loaded=$(tr -d '\r' <"$log" | sed -n 's/^@@LIBBPF .*(\(v[0-9.]*\))$/\1/p' | head -1)
    row "$id" "$(date -u +%F)" "$(tr -d '\r' <"$log" | sed -n 's/^@@KERNEL \([^ ]*\).*/\1/p' | head -1) ($debver, $suite)" \
        "$libcol${loaded:+, loaded $loaded}" "$result" "$steps" "$secs s" "${err//|/\\|}"
    [ "$expect" = pass ] && [ "$result" != pass ] && FAILED=1
done <<<"$KERNELS"

report
exit $FAILED
