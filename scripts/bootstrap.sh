#!/usr/bin/env bash
# Installs everything the tests and the benchmark need on a Debian machine (bookworm or later), as root:
# Debian packages (CNCF distribution registry, skopeo, nginx, iproute2, python3-venv), containerd >= 2.1 from
# Debian unstable (the newest Debian offers; downloaded and unpacked into the cache without touching the system's
# apt sources, from the Debian mirror the machine's own apt sources use), and a Python venv (.venv) with nox.
# The services the packages install (nginx, docker-registry) are stopped and disabled: the tests start their own.
# Idempotent: every step is skipped when its result is already there.
# SPEGEL_CONTAINERD_VERSION=V insists on version V (fails, saying so, when Debian does not offer it).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPEGEL_CACHE:-/var/cache/spegel-py}
containerd_link="$cache/containerd"  # -> containerd-<version>; benchmark.daemons runs $containerd_link/usr/bin
packages=(docker-registry skopeo nginx-light iproute2 nftables ca-certificates chromium python3-venv)
services=(nginx docker-registry)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if ! grep -qsx 'ID=debian' /etc/os-release; then
    system=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
    log "refusing to run: needs Debian, this is ${system:-not Debian}"
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    log "must run as root (installs Debian packages)"; exit 1
fi
mkdir -p "$cache"

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! command -v kubectl >/dev/null; then missing+=(kubernetes-client); fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packages' services must not hold the ports the tests use (docker-registry takes :5000, Spegel's default).
for service in "${services[@]}"; do
    if [ -d /run/systemd/system ]; then
        if systemctl is-enabled --quiet "$service" 2>/dev/null || systemctl is-active --quiet "$service" 2>/dev/null; then
            log "stopping and disabling the $service service"
            systemctl disable --now --quiet "$service"
        fi
    elif [ -x "/etc/init.d/$service" ]; then  # no systemd running (a container): stop it if it runs, keep it off
        if systemctl is-enabled --quiet "$service" 2>/dev/null; then
            log "disabling the $service service"
            systemctl disable --quiet "$service" 2>/dev/null || update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
        if service "$service" status >/dev/null 2>&1; then
            log "stopping the $service service"
            service "$service" stop >/dev/null
        fi
    fi
done

# The Debian archive the machine's apt sources use (not its security archive), e.g. http://deb.debian.org/debian/.
debian_mirror() {
    # shellcheck disable=SC2016  # $(FIELD) is apt's template syntax, not the shell's
    apt-get indextargets --format '$(ORIGIN) $(SUITE) $(REPO_URI)' 2>/dev/null |
        awk '$1 == "Debian" && $2 !~ /-security$/ {print $3; exit}'
}

if [ ! -x "$containerd_link/usr/bin/containerd" ]; then
    mirror=$(debian_mirror)
    if [ -z "$mirror" ]; then apt-get update -qq; mirror=$(debian_mirror); fi
    if [ -z "$mirror" ]; then log "no Debian archive in the machine's apt sources (apt-get indextargets)"; exit 1; fi
    log "fetching containerd from Debian unstable at $mirror into $cache"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror unstable main" > "$work/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o Debug::NoDropPrivs=true -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
    version=$(apt-cache "${apt_opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
    wanted=${SPEGEL_CONTAINERD_VERSION:-}
    if [ -n "$wanted" ] && [[ "$version" != "$wanted"* ]]; then
        log "SPEGEL_CONTAINERD_VERSION=$wanted, but Debian unstable offers containerd ${version:-none}"; exit 1
    fi
    if [ -z "$version" ] || [ "$version" = "(none)" ] || ! dpkg --compare-versions "$version" ge 2.1~; then
        log "Debian unstable offers containerd ${version:-none}; the mirror needs >= 2.1"; exit 1
    fi
    upstream=${version#*:}  # 2.1.9+ds1-5 -> 2.1.9
    containerd_dir="$cache/containerd-${upstream%%[~+-]*}"
    if [ ! -x "$containerd_dir/usr/bin/containerd" ]; then
        (cd "$work" && apt-get "${apt_opts[@]}" download -qq "containerd=$version")
        mkdir -p "$containerd_dir.tmp"
        dpkg-deb -x "$work"/containerd_*.deb "$containerd_dir.tmp"
        rm -rf "$containerd_dir" && mv "$containerd_dir.tmp" "$containerd_dir"
    fi
    ln -sfn "$(basename "$containerd_dir")" "$containerd_link"
fi
"$containerd_link/usr/bin/containerd" --version >&2

# Debian's kubectl 1.20 (kustomize v2), unpacked into the cache: the deploy/ manifests must render with it too.
kubectl_dir="$cache/kubernetes-client-1.20"
if [ ! -x "$kubectl_dir/usr/bin/kubectl" ]; then
    log "fetching Debian's kubernetes-client (kubectl 1.20) into $kubectl_dir"
    kc_work=$(mktemp -d)
    kc_download() { (cd "$kc_work" && apt-get -o APT::Sandbox::User=root download -qq "kubernetes-client=1.20.*"); }
    kc_download || { apt-get update -qq && kc_download; }
    mkdir -p "$kubectl_dir.tmp"
    dpkg-deb -x "$kc_work"/kubernetes-client_*.deb "$kubectl_dir.tmp"
    rm -rf "$kubectl_dir" "$kc_work" && mv "$kubectl_dir.tmp" "$kubectl_dir"
fi

if [ ! -x "$here/.venv/bin/nox" ]; then
    log "creating $here/.venv with nox"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q --disable-pip-version-check -c "$here/constraints.txt" nox
fi
