#!/usr/bin/env bash
# Debian packages the integration tests start for real: the CNCF distribution registry, skopeo
# (a client nobody here wrote), htpasswd (for the basic-auth registry), espeak-ng (speech), and
# buildah, podman, mmdebstrap and runc (the container image), busybox-static (model images). Installs only what is
# missing; needs apt-get, and root or sudo.
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v espeak-ng >/dev/null || need+=(espeak-ng)  # real speech for the ASR example, tests and demo
# the runtime_min image (make image) is built without a Docker daemon and run as a pod runs it
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v runc >/dev/null || need+=(runc)
# a statically linked busybox: the shell `nimbuild publish --images modelcar` puts into model images
busybox=$(command -v busybox || true)
{ [ -n "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1; } || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "missing ${need[*]} and no apt-get here: install them by hand, or the tests that need them skip" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${need[*]} (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
