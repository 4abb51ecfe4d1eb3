#!/usr/bin/env bash
# The container image, built and tested on this machine, as root:
#   1. contrib/container/build.sh: the image (wheels made here, Debian 12 base, no compiler, no pip);
#   2. tests/kernel/test_verdicts.py inside it, with the DaemonSet's capabilities (BPF, NET_ADMIN,
#      PERFMON, SYS_ADMIN; the pytest it runs under is mounted beside it, in an image with iproute2 added);
#   3. the agent as the DaemonSet runs it, in a network namespace of this run's own: it attaches to the
#      namespace's default-route interface, enforces the mounted config, and leaves the filter attached
#      when stopped (SIGTERM); a second agent (a pod restarted, or upgraded) finds it and is ready.
# Installs podman, runc and mmdebstrap when missing. Podman runs containers with runc here (crun refuses
# this machine's hybrid cgroups) and with its default limits lowered to what root may set here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "scripts/container.sh: run as root (sudo)" >&2; exit 2; fi
missing=()
for p in podman runc mmdebstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "container: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash scripts/setup.sh --test >/dev/null
version=$(.venv/bin/python -c 'import pyxdp; print(pyxdp.__version__)')
image=localhost/pyxdp:$version
t0=$SECONDS
bash contrib/container/build.sh "pyxdp:$version"

run=pyxdp-ctr-$$
work=$(mktemp -d "/tmp/$run.XXXXXX")
pins=/sys/fs/bpf/$run
cleanup() {
    podman rm -f "$run" >/dev/null 2>&1 || true
    ip netns del "$run" 2>/dev/null || true
    rm -rf "$work" "$pins"
}
trap cleanup EXIT
runopts=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --security-opt seccomp=unconfined
         --cap-drop=all --cap-add=bpf,net_admin,perfmon,sys_admin)

echo "== the verdict tests inside the image"
printf 'FROM %s\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null && rm -rf /var/lib/apt/lists/*\n' \
    "$image" > "$work/Containerfile"
podman build --quiet --isolation=chroot --network=host -t "localhost/pyxdp-test:$version" "$work" >/dev/null
.venv/bin/pip install --quiet --disable-pip-version-check --target "$work/deps" pytest hypothesis \
    2> >(grep -v "^WARNING: Location" >&2)
# on a bpffs of its own (the host's pins are never in reach: the tests' sweep of stale pin directories
# judges them by pids, which another pid namespace cannot see)
podman run --rm "${runopts[@]}" --network=host -v "$PWD/tests:/src/tests:ro" -v "$work/deps:/deps:ro" \
    -e PYTHONPATH=/deps -e HOME=/tmp -w /src --entrypoint /bin/sh "localhost/pyxdp-test:$version" -c \
    'mount -t bpf bpf /sys/fs/bpf && exec /opt/pyxdp/bin/python -m pytest -q -p no:cacheprovider --rootdir=/src tests/kernel/test_verdicts.py'

echo "== the agent in the image, in namespace $run"
ip netns add "$run"
ip -n "$run" link add vctr0 type veth peer name vctr1
ip -n "$run" addr add 10.78.0.1/24 dev vctr0
ip -n "$run" link set vctr0 up
ip -n "$run" link set vctr1 up
ip -n "$run" link set lo up
ip -n "$run" route add default via 10.78.0.2
mkdir -p "$work/etc"
printf 'policy = "pass"\nrules = ["deny proto tcp to any port 23"]\n' > "$work/etc/pyxdp.toml"
agent() {  # start the agent container, wait until it is ready, stop it with SIGTERM
    podman run "${runopts[@]}" -d --name "$run" --network "ns:/run/netns/$run" -v /sys/fs/bpf:/sys/fs/bpf \
        -v "$work/etc:/etc/pyxdp:ro" \
        "$image" --pin-dir "$pins" agent --config /etc/pyxdp/pyxdp.toml --watch --interfaces default-route \
        --listen 127.0.0.1:9436 --node "$run" >/dev/null
    ready=$(ip netns exec "$run" python3 - <<'PY'
import time, urllib.error, urllib.request
for _ in range(150):  # ready once the firewall runs the file's generation on the interface
    try:
        print(urllib.request.urlopen("http://127.0.0.1:9436/readyz", timeout=5).read().decode().strip())
        break
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.2)
PY
)
    echo "$ready"
    [[ $ready == "ready: generation $(sha256sum "$work/etc/pyxdp.toml" | cut -c1-12)" ]] || { podman logs "$run"; exit 1; }
    ip -n "$run" -d link show vctr0 | grep -q "prog/xdp" || { echo "container: the agent did not attach" >&2; exit 1; }
    podman stop --time 20 "$run" >/dev/null
    code=$(podman inspect --format '{{.State.ExitCode}}' "$run")
    podman logs "$run" 2>&1 | sed 's/^/  /'
    [[ $code == 0 ]] || { echo "container: the agent exited $code on SIGTERM" >&2; exit 1; }
    ip -n "$run" -d link show vctr0 | grep -q "prog/xdp" || { echo "container: SIGTERM took the filter off" >&2; exit 1; }
    podman rm "$run" >/dev/null
}
agent
echo "== a second agent (the pod restarted or upgraded): the filter stayed on, it is ready"
agent
podman run --rm "${runopts[@]}" --network "ns:/run/netns/$run" -v /sys/fs/bpf:/sys/fs/bpf "$image" --pin-dir "$pins" detach vctr0 >/dev/null
echo "container: image $image built and tested in $((SECONDS - t0)) s"
