#!/usr/bin/env bash
# Installs what pyxdp needs on a fresh Debian 12 machine and builds .venv.
#   scripts/setup.sh          runtime only: the package and its Python deps (cffi, prometheus_client, rich)
#   scripts/setup.sh --test   also clang-19, bpftool, libbpf-dev and the test tools
#   scripts/setup.sh --bench  --test, plus the peers measured against (xdp-tools, nftables, iptables, trafgen, bcc + kernel headers)
# Run as root (apt-get). Idempotent: installs only what is missing (no pip at all when .venv is complete).
# Links /usr/local/sbin/pyxdp-load to .venv/bin/pyxdp-load (never over another file); the last line says so.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(libbpf1 iproute2)
mode=${1:-}
if [[ $mode == --test || $mode == --bench ]]; then
  want+=(clang-19 llvm-19 bpftool libbpf-dev make util-linux fail2ban tcpdump systemd nftables strace ufw)  # systemd: systemd-analyze; nftables: the conntrack differential; strace: crash tests; ufw: the ufw differential (run only in a test's own namespaces)
  want+=(prometheus)  # promtool: the exporter's answer checked by Prometheus' own linter
fi
if [[ $mode == --bench ]]; then
  want+=(xdp-tools nftables iptables netsniff-ng python3-bpfcc linux-headers-amd64)
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  # a test tool's service (fail2ban's) must not start on this host, now or at boot: policy-rc.d
  # exit 101 denies the start to invoke-rc.d and deb-systemd-invoke (an existing one is kept)
  own_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    own_policy=1 && trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ -z $own_policy ]] || rm -f /usr/sbin/policy-rc.d
  for svc in fail2ban prometheus ufw; do  # installed for their tools (fail2ban-server, promtool, ufw): never started
    if [[ " ${missing[*]} " == *" $svc "* ]]; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
      deb-systemd-helper disable "$svc.service" >/dev/null 2>&1 || true
    fi
  done
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
extra=
[[ $mode == --test || $mode == --bench ]] && extra=test
# pip only when .venv lacks something: a rerun needs no package index. One build and install:
# pip always reinstalls a local directory; build/ goes first (setuptools would pack files deleted since)
if why=$(.venv/bin/python -I scripts/venv_current.py ${extra:+--extra $extra}); then
  venv="up to date"
else
  echo "setup: installing into .venv: $why"
  rm -rf build
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check ".${extra:+[$extra]}" >/dev/null
  venv=ready
fi

# 'sudo pyxdp-load ...' as the README shows it: a link in /usr/local/sbin (on sudo's secure_path),
# made only where nothing is, or replacing our own link (also a dangling one left by a moved tree)
sbin=${PYXDP_SBIN:-/usr/local/sbin}  # another directory: for tests
cli="$(pwd -P)/.venv/bin/pyxdp-load"
link="$sbin/pyxdp-load"
old=$(readlink "$link" 2>/dev/null || true)
if [[ $old == "$cli" ]]; then
  linked="pyxdp-load is $link -> $cli"
elif [[ -L $link && ! -e $link && $old == */.venv/bin/pyxdp-load ]] && ln -sfn "$cli" "$link" 2>/dev/null; then
  linked="pyxdp-load is $link -> $cli (replaced a dangling link to $old)"
elif [[ -e $link || -L $link ]]; then
  linked="$link is not ours (${old:-a file}): left alone; run $cli"
elif ln -s "$cli" "$link" 2>/dev/null; then
  linked="pyxdp-load is $link -> $cli"
else
  linked="cannot link $link (not root?): run $cli"
fi
echo "setup: .venv $venv ($(.venv/bin/python --version)); $linked"
