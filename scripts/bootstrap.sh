#!/usr/bin/env bash
# Installs everything the tests and the benchmark need on a fresh Debian bookworm machine, as root:
# Debian packages (CNCF distribution registry, skopeo, nginx, iproute2), containerd 2.1.9 from Debian sid
# (downloaded and unpacked into the cache without touching the system's apt sources), and a Python venv
# (.venv) with nox. Idempotent: every step is skipped when its result is already there.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPEGEL_CACHE:-/var/cache/spegel-py}
containerd_version=${SPEGEL_CONTAINERD_VERSION:-2.1.9}
containerd_dir="$cache/containerd-$containerd_version"
packages=(docker-registry skopeo nginx-light iproute2 nftables ca-certificates chromium)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

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

if [ ! -x "$containerd_dir/usr/bin/containerd" ]; then
    log "fetching containerd $containerd_version from Debian sid into $containerd_dir"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
        > "$work/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o Debug::NoDropPrivs=true -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
    version=$(apt-cache "${apt_opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
    case "$version" in
        "$containerd_version"*) ;;
        *) log "Debian sid offers containerd $version, not $containerd_version"; exit 1 ;;
    esac
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq "containerd=$version")
    mkdir -p "$containerd_dir.tmp"
    dpkg-deb -x "$work"/containerd_*.deb "$containerd_dir.tmp"
    rm -rf "$containerd_dir" && mv "$containerd_dir.tmp" "$containerd_dir"
fi
"$containerd_dir/usr/bin/containerd" --version >&2

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
