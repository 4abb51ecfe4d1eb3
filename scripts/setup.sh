#!/usr/bin/env bash
# Installs what pyxdp needs on a fresh Debian 12 machine and builds .venv.
#   scripts/setup.sh          runtime only: the package and its two Python deps
#   scripts/setup.sh --test   also clang-19, bpftool, libbpf-dev and the test tools
#   scripts/setup.sh --bench  --test, plus the peers measured against (xdp-tools, nftables, iptables, trafgen, bcc + kernel headers)
# Run as root (apt-get). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(libbpf1 iproute2)
mode=${1:-}
if [[ $mode == --test || $mode == --bench ]]; then
  want+=(clang-19 llvm-19 bpftool libbpf-dev make util-linux fail2ban)
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
  if [[ " ${missing[*]} " == *" fail2ban "* ]]; then
    update-rc.d fail2ban disable >/dev/null 2>&1 || true
    deb-systemd-helper disable fail2ban.service >/dev/null 2>&1 || true
  fi
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if [[ $mode == --test || $mode == --bench ]]; then
  .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check '.[test]' >/dev/null
else
  .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check . >/dev/null
fi
echo "setup: .venv ready ($(.venv/bin/python --version), pyxdp-load at .venv/bin/pyxdp-load)"
