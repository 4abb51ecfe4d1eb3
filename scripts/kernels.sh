#!/bin/bash
# Boot Debian's own kernel packages in qemu with this machine's root file
# system (read-only, over virtio-9p) and run pyxdp inside each:
#   programs  each program of the object (xdp_filter, sweep_start) verified alone
#   load   the shipped object at the default rule capacity and at 8,192 rules
#   replay a pcap with known verdicts (rules, a ban, a malformed frame, ARP, IPv6)
#   pytest tests/test_verdicts.py tests/test_model.py
# then print a table kernel -> result -> first error line and write it to
# $CACHE/results.md (KERNELS.md is that file, committed by hand).
#
#   sudo bash scripts/kernels.sh                 # every kernel in KERNELS below
#   sudo bash scripts/kernels.sh 6.1 6.12        # only these labels
#   bash scripts/kernels.sh --report             # the table of the last results, nothing booted
#
# Idempotent: kernel packages are fetched once with `apt-get download` through
# a private apt configuration (its own sources file, lists and cache under
# $CACHE; the host's apt sources and lists are not touched; the temporary
# sources file is removed on exit). Extracted kernels, initramfs images and
# serial logs stay in $CACHE (default /var/cache/pyxdp-kernels).
# KVM is used when PYXDP_KVM=1 (and /dev/kvm works), TCG otherwise (~90 s a boot).
# Exit status: non-zero when a kernel listed as expected to pass fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PYXDP_KERNEL_CACHE:-/var/cache/pyxdp-kernels}
VENV=${PYXDP_VENV:-$ROOT/.venv}
MEM=${PYXDP_VM_MEM:-3G}
TIMEOUT=${PYXDP_VM_TIMEOUT:-2400}    # seconds for one whole boot + run
PYTEST_ARGS=${PYXDP_PYTEST_ARGS:-"-q --color=no -p no:cacheprovider tests/test_verdicts.py tests/test_model.py"}

# label  suite-the-metapackage-comes-from  expectation (pass | fail: documented unsupported)
KERNELS="
5.10  bullseye-security   fail
6.1   bookworm-security   pass
6.12  trixie-security     pass
newest trixie-backports   pass
"

tree_line() {  # what was tested: the commit, and the object's hash
    echo "Last run on tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- pyxdp bpf tests 2>/dev/null || echo ' (pyxdp/bpf/tests modified)'), pyxdp/xdp_filter.bpf.o sha256 $(sha256sum "$ROOT/pyxdp/xdp_filter.bpf.o" | cut -c1-16)"
}
# the table: the latest row of every kernel label, with what was tested
report() {
    local label _
    {
        cat "$CACHE/rows/.tree" 2>/dev/null || tree_line
        echo
        echo "Table written $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r) host, qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), ${ACCEL%% -cpu*}, libbpf $LIBBPF, python $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
        echo
        echo "| label | date | kernel (Debian version, suite) | result | steps | boot+run | first error line |"
        echo "|---|---|---|---|---|---|---|"
        while read -r label _; do [ -z "$label" ] || cat "$CACHE/rows/$label" 2>/dev/null || true; done <<<"$KERNELS"
    } | tee "$CACHE/results.md"
}
LIBBPF=$(dpkg-query -W -f='${Version}' libbpf1 2>/dev/null || echo unknown)
ACCEL="-accel tcg -cpu max"
if [ "${PYXDP_KVM:-0}" = 1 ] && [ -w /dev/kvm ]; then ACCEL="-accel kvm -cpu host"; fi
if [ "${1:-}" = --report ]; then report; exit 0; fi   # print the last results, boot nothing

[ "$(id -u)" = 0 ] || { echo "run as root (apt-get download into $CACHE, guest runs as root)" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || apt-get install -y qemu-system-x86
for t in dpkg-deb xz zstd gzip; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 2; }; done

mkdir -p "$CACHE"/{debs,apt/lists/partial,apt/cache/archives/partial,k,logs,rows}
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
SRC=$RUN/pyxdp.sources
QEMU_PID=
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$SRC" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye bookworm bookworm-updates bookworm-backports trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bullseye-security bookworm-security trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o "Dir::Etc::SourceList=$SRC" -o "Dir::Etc::SourceParts=$RUN/none"
     -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache"
     -o "APT::Sandbox::User=root")
mkdir -p "$RUN/none"
# Refresh the private lists at most once a day, or when the suites above change.
if ! cmp -s "$SRC" "$CACHE/apt/sources.used" ||
   [ -z "$(find "$CACHE/apt/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    apt-get "${APT[@]}" -q update >/dev/null
    cp "$SRC" "$CACHE/apt/sources.used"
fi

fetch() {  # fetch PKG...: into $CACHE/debs unless present
    local p f
    for p in "$@"; do
        f=$(ls "$CACHE"/debs/"${p%%=*}"_*.deb 2>/dev/null | head -1 || true)
        [ -n "$f" ] || (cd "$CACHE/debs" && apt-get "${APT[@]}" -q download "$p" >/dev/null)
    done
}

# busybox (static) for the initramfs
fetch busybox-static
BB=$CACHE/k/busybox
[ -x "$BB" ] || { d=$(mktemp -d "$RUN/bb.XXXX"); dpkg-deb -x "$(ls "$CACHE"/debs/busybox-static_*.deb | head -1)" "$d"; cp "$(ls "$d"/bin/busybox "$d"/usr/bin/busybox 2>/dev/null | head -1)" "$BB"; }

# resolve LABEL SUITE -> kernel image package (and split binary/modules packages)
resolve() {
    local suite=$1 ver deps
    ver=$(apt-cache "${APT[@]}" madison linux-image-amd64 | awk -F'[|]' -v s="$suite" '$3 ~ (" "s"/") {gsub(/ /, "", $2); print $2; exit}')
    [ -n "$ver" ] || return 1
    local img extra deps
    deps=$(apt-cache "${APT[@]}" show "linux-image-amd64=$ver" | sed -n 's/^Depends: //p' | head -1)
    img=$(echo "$deps" | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -1)
    # newer packaging splits the image: linux-image-X depends on linux-binary-X and linux-modules-X
    extra=$(apt-cache "${APT[@]}" show "$img" | sed -n 's/^Depends: //p' | head -1 | tr ',' '\n' |
            sed -n 's/^ *\(linux-\(binary\|modules\)-[^ ]*\).*/\1/p' | tr '\n' ' ')
    [ -n "$img" ] || return 1
    echo "$img $extra"
}

# build $KDIR/initrd.gz: busybox, the 9p/virtio modules (decompressed), /init
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
    for m in virtio_pci 9pnet_virtio 9p; do addmod $m; done
    cat >"$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null || echo "initrd: insmod $m failed"; done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 root /newroot; then
    echo "@@FATAL 9p root mount failed"; echo o >/proc/sysrq-trigger; sleep 10
fi
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash "$pyxdp_guest"
EOF
    chmod +x "$ird/init"
    (cd "$ird" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1) >"$kdir/initrd.gz.tmp"
    mv "$kdir/initrd.gz.tmp" "$kdir/initrd.gz"
    rm -rf "$ird"
}

# ---- the run inside the guest ---------------------------------------------------------------
cat >"$RUN/guest.sh" <<EOF
# runs as PID 1 in the guest, on the host's root (read-only 9p), tmpfs /tmp and /run
export HOME=/tmp PATH=$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=$ROOT PYTHONDONTWRITEBYTECODE=1
export LANG=C.UTF-8 TMPDIR=/tmp
mkdir -p /dev/shm /dev/pts; mount -t tmpfs tmpfs /dev/shm; mount -t devpts devpts /dev/pts
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
cd $ROOT
echo "@@KERNEL \$(uname -r) \$(cat /proc/version)"
step() {
    local name=\$1; shift
    echo "@@BEGIN \$name"
    timeout ${TIMEOUT} "\$@" </dev/null 2>&1; local rc=\$?
    echo "@@END \$name rc=\$rc"
}
step programs python $RUN/checks.py programs
step load-default python $RUN/checks.py load
step load-8192 python $RUN/checks.py load 8192
step replay python $RUN/checks.py replay
step pytest python -m pytest $PYTEST_ARGS
echo "@@DONE"
sync; echo o >/proc/sysrq-trigger; sleep 30
EOF

cat >"$RUN/checks.py" <<'EOF'
import os, sys
import pyxdp
from pyxdp import Verdict as V, Reason as R
from pyxdp.pcap import read_pcap, write_pcap
sys.path.insert(0, os.path.join(os.path.dirname(pyxdp.__file__), "..", "tests"))
import packets as P

if sys.argv[1] == "programs":
    # each program of the shipped object verified on its own: shows every
    # program's first error, not only the first program's
    from pyxdp.bpf import BpfObject
    from pyxdp.state import OBJECT_PATH
    with BpfObject(OBJECT_PATH) as obj:
        names = list(obj._progs)
    bad = 0
    for name in names:
        try:
            with BpfObject(OBJECT_PATH) as obj:
                obj.only_program(name)
                obj.load()
            print(f"program {name}: loaded")
        except pyxdp.VerifierError as e:
            bad += 1
            print(f"program {name}: VerifierError: {e.cause()}")
            print("\n".join("    " + ln for ln in e.log.rstrip().splitlines()[-6:]))
        except pyxdp.PyxdpError as e:
            bad += 1
            print(f"program {name}: {type(e).__name__}: {e}")
    sys.exit(1 if bad else 0)

if sys.argv[1] == "load":
    rules = int(sys.argv[2]) if len(sys.argv) > 2 else None
    pin = "/sys/fs/bpf/k" + (str(rules) if rules else "")
    try:
        f = pyxdp.Filter.open(pin, create=True, with_program=True, rules=rules)
    except pyxdp.VerifierError as e:
        print(f"{type(e).__name__}: {e}")
        print("verifier log, last 12 lines:")
        print("\n".join("    " + ln for ln in e.log.rstrip().splitlines()[-12:]))
        sys.exit(1)
    f.close()
    print("loaded", pin, "rules", rules or "default")
    sys.exit(0)

cases = [  # packet, expected verdict, expected reason
    (P.tcp4("192.0.2.5", 22), V.PASS, R.RULE_ALLOW),
    (P.tcp4("198.51.100.9", 22), V.DROP, R.RULE_DENY),
    (P.udp4("203.0.113.7", 53), V.DROP, R.RULE_DENY),       # banned
    (P.tcp4("198.51.100.9", 443), V.PASS, R.RULE_ALLOW),
    (P.tcp4("198.51.100.9", 8080), V.DROP, R.POLICY),
    (P.eth(P.ETH_ARP, P.arp()), V.PASS, R.ARP),
    (P.eth(P.ETH_IP, b"\x45\x00"), V.DROP, R.MALFORMED),
    (P.tcp6("2001:db8::1", 22), V.DROP, R.RULE_DENY),
    (P.udp6("2001:db8::1", 53), V.DROP, R.POLICY),
]
with open("/tmp/replay.pcap", "wb") as out:
    write_pcap(out, [c[0] for c in cases])
f = pyxdp.Filter.open("/sys/fs/bpf/replay", create=True, with_program=True)
f.add_rule("allow proto tcp from 192.0.2.0/24 to any port 22")
f.add_rule("deny 22/tcp")
f.add_rule("allow 80,443/tcp")
f.set_policy(V.DROP)
f.ban(["203.0.113.7"], ttl=600)
with open("/tmp/replay.pcap", "rb") as inp:
    got = list(f.replay(read_pcap(inp)))
f.close()
bad = 0
for (_, ev, er), r in zip(cases, got):
    ok = (r.verdict, r.reason) == (ev, er)
    bad += not ok
    print(f"packet {r.number}: {r.verdict.label}/{r.reason.label} expected {ev.label}/{er.label} {'ok' if ok else 'MISMATCH'}")
if len(got) != len(cases):
    print(f"MISMATCH: {len(got)} results for {len(cases)} packets"); bad += 1
print(f"replay: {len(cases) - bad}/{len(cases)} verdicts as expected")
sys.exit(1 if bad else 0)
EOF

# ---- each kernel ----------------------------------------------------------------------------
WANT=" $* "
RES=$RUN/results
: >"$RES"
FAILED=0
while read -r label suite expect; do
    [ -n "$label" ] || continue
    [ "$WANT" = "  " ] || [[ $WANT == *" $label "* ]] || continue
    pkgs=$(resolve "$suite") || { echo "$label: no linux-image-amd64 in $suite" >&2; echo "| $label | $(date -u +%F) | (not found in $suite) | not run | | | |" >>"$RES"; FAILED=1; continue; }
    img=${pkgs%% *}
    [[ $img == linux-image-?* ]] || { echo "$label: cannot resolve the image package in $suite" >&2; FAILED=1; continue; }
    fetch $pkgs
    kver=${img#linux-image-}
    kdir=$CACHE/k/$kver
    if [ ! -f "$kdir/.extracted" ]; then
        rm -rf "$kdir"; mkdir -p "$kdir"
        for p in $pkgs; do dpkg-deb -x "$(ls "$CACHE"/debs/"$p"_*.deb | head -1)" "$kdir"; done
        [ -d "$kdir/lib/modules/$kver" ] || { [ -d "$kdir/usr/lib/modules/$kver" ] && mkdir -p "$kdir/lib" && ln -s ../usr/lib/modules "$kdir/lib/modules"; }
        touch "$kdir/.extracted"
    fi
    [ -f "$kdir/initrd.gz" ] || mkinitrd "$kdir" "$kver"
    # boot/vmlinuz-KVER (<= 6.x packaging) or usr/lib/modules/KVER/vmlinuz (linux-binary-*, 7.x)
    vmlinuz=$(ls "$kdir"/boot/vmlinuz-* "$kdir"/usr/lib/modules/"$kver"/vmlinuz 2>/dev/null | head -1 || true)
    [ -n "$vmlinuz" ] || { echo "$label: no vmlinuz in $pkgs" >&2; FAILED=1; continue; }
    debver=$(dpkg-deb -f "$(ls "$CACHE"/debs/"$img"_*.deb | head -1)" Version)
    log=$CACHE/logs/$kver.log
    echo "== $label: $img $debver ($suite), log $log" >&2
    start=$(date +%s)
    qemu-system-x86_64 $ACCEL -machine q35 -m "$MEM" -smp 2 -nodefaults -no-reboot -display none \
        -serial "file:$log" -monitor none \
        -kernel "$vmlinuz" -initrd "$kdir/initrd.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off pyxdp_guest=$RUN/guest.sh" \
        -virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap &
    QEMU_PID=$!
    ( sleep "$TIMEOUT"; kill "$QEMU_PID" 2>/dev/null ) & watchdog=$!
    wait "$QEMU_PID" || true
    QEMU_PID=
    kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null || true
    secs=$(( $(date +%s) - start ))
    # per step: rc and the first error line (verifier cause, exception, failed test)
    summary=$(tr -d '\r' <"$log" | awk '
        /^@@BEGIN / {step=$2; first=""; n=0; next}
        /^@@END /   {rc=$3; sub(/rc=/,"",rc); r[step]=rc; if (rc!=0) e[step]=(sfirst!="" ? sfirst : first); order=order" "step; step=""; sfirst=""; next}
        step=="pytest" && sfirst=="" && /^(FAILED|ERROR) tests/ {sfirst=$0}
        step!="" && first=="" && /(not supported|[Ii]nvalid|unknown func|[Pp]ermission|[Ee]rror|FAILED|failed|Traceback|rejected|cannot|Errno)/ {
            if ($0 !~ /^Traceback/) first=$0 }
        step!="" && /^[A-Za-z_.]+(Error|Exception): / && first=="" {first=$0}
        step=="pytest" && /(passed|failed|error|errors)( ,|,| in [0-9.]+s)/ {pyline=$0; gsub(/=/,"",pyline); gsub(/^ +| +$/,"",pyline)}
        END {
            split(order, s, " "); out=""; err="";
            n=split(order, s, " ")
            for (i=1;i<=n;i++) { k=s[i]; out=out k "=" (r[k]==0?"ok":"FAIL(" r[k] ")") " "; if (r[k]!=0 && err=="") err=k ": " e[k] }
            if (pyline!="") out=out "[pytest: " pyline "]"
            printf "%s\t%s\n", out, err
        }')
    steps=${summary%%$'\t'*}; err=${summary#*$'\t'}
    if grep -q '^@@DONE' <(tr -d '\r' <"$log") && ! grep -q 'FAIL' <<<"$steps"; then result=pass; else result=fail; fi
    grep -q '^@@DONE' <(tr -d '\r' <"$log") || { err=${err:-"guest did not finish (see $log)"}; steps="${steps:-none} (incomplete)"; }
    printf '| %s | %s | %s (%s, %s) | %s | %s | %s s | %s |\n' "$label" "$(date -u +%F)" "$(tr -d '\r' <"$log" | sed -n 's/^@@KERNEL \([^ ]*\).*/\1/p' | head -1)" \
        "$debver" "$suite" "$result" "$steps" "$secs" "${err//|/\\|}" >>"$RES"
    tail -1 "$RES" >&2
    tail -1 "$RES" >"$CACHE/rows/$label"
    tree_line >"$CACHE/rows/.tree"
    [ "$expect" = pass ] && [ "$result" != pass ] && FAILED=1
done <<<"$KERNELS"

report
exit $FAILED
