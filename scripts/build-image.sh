#!/usr/bin/env bash
# `make image`: the runtime_min container image (image/Containerfile), built without a Docker daemon.
#
#   scripts/build-image.sh [--tag NAME] [--release MODEL:RELEASE --registry URI]... [--base IMAGE]
#                          [--extras serve|serve,trt] [--push DEST]
#
#   --release/--registry  bake that published release's manifest (NIM v2, files named by their URIs
#                         in the registry) at /opt/nim/etc/default/model_manifest.yaml, where the NIM
#                         Operator's manifest probe reads it; repeat --release for several models
#   --base                default: a Debian 12 base made here by mmdebstrap (kept in build/image/);
#                         GPU hosts: nvcr.io/nvidia/tritonserver:<yy.mm>-py3
#   --push                also copy the image there (docker://host/repo:tag, oci:DIR:tag, ...)
#
# buildah runs with chroot isolation and vfs storage, which work without a daemon, without
# privileges beyond root's, and inside other containers; podman reads the same storage
# (`podman --storage-driver vfs run --runtime runc ...`).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=localhost/runtime_min:0.1.0
BASE=""
EXTRAS=serve
PUSH=""
RELEASES=()
REGISTRY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --extras) EXTRAS=$2; shift 2 ;;
        --push) PUSH=$2; shift 2 ;;
        --release) RELEASES+=("$2"); shift 2 ;;
        --registry) REGISTRY=$2; shift 2 ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ ${#RELEASES[@]} -gt 0 ] && [ -z "$REGISTRY" ]; then
    echo "build-image: --release needs --registry (where the release is published)" >&2; exit 2
fi
for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install buildah mmdebstrap)" >&2; exit 2; }
done
PY=${PY:-.venv/bin/python}
BUILDAH=(buildah --storage-driver vfs)
OUT=build/image
CONTEXT=$OUT/context
start=$(date +%s)

# The Debian base, made once and kept: minbase, Python 3.11 with venv and the shared libpython
# (the Triton Python backend stub links it), passwd (useradd), CA certificates; no docs or locales.
base_image=localhost/nimbuild-base:bookworm
if [ -z "$BASE" ]; then
    BASE=$base_image
    if ! "${BUILDAH[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
        mkdir -p "$OUT"
        if [ ! -s "$OUT/base.tar" ]; then
            mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,libpython3.11,passwd,ca-certificates \
                --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
                --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
                bookworm "$OUT/base.tar.tmp" http://deb.debian.org/debian
            mv "$OUT/base.tar.tmp" "$OUT/base.tar"
        fi
        container=$("${BUILDAH[@]}" from scratch)
        "${BUILDAH[@]}" add "$container" "$OUT/base.tar" / >/dev/null
        "${BUILDAH[@]}" commit --quiet --rm "$container" "$base_image" >/dev/null
    fi
fi

# The build context: nimbuild's wheel, pins from the tested environment, and the baked manifest.
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/wheels" "$CONTEXT/etc"
# setuptools stages the wheel in build/lib and keeps it: a module deleted since the last build would
# ride along, so the staging is cleared on both sides
rm -rf build/lib build/bdist.*
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$CONTEXT/wheels" . 2>&1 | grep -v "is ignored" || true
rm -rf build/lib build/bdist.*
ls "$CONTEXT"/wheels/nimbuild-*.whl >/dev/null  # the wheel was built (pip's own errors are above)
# the versions the test suite ran with (pip's constraints pin only what the extras install)
"$PY" -m pip freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' > "$CONTEXT/constraints.txt"
if [ ${#RELEASES[@]} -gt 0 ]; then
    args=()
    for r in "${RELEASES[@]}"; do args+=(--release "$r"); done
    "$PY" -m nimbuild -q profiles export --format nim-v2 "${args[@]}" --registry "$REGISTRY" \
        --out "$CONTEXT/etc/model_manifest.yaml" >/dev/null
fi

cert_args=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then  # a TLS-inspecting proxy's CA, for pip at build time only
    cert_args=(--volume "$(readlink -f "$PIP_CERT"):/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi
"${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false --file image/Containerfile \
    --build-arg BASE="$BASE" --build-arg EXTRAS="$EXTRAS" --build-arg RELEASE="${RELEASES[*]:-}" \
    "${cert_args[@]}" --tag "$TAG" "$CONTEXT" >/dev/null
if [ -n "$PUSH" ]; then
    "${BUILDAH[@]}" push --quiet "$TAG" "$PUSH"
fi
size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$TAG" | head -n 1)
echo "built $TAG ($size) from $BASE in $(( $(date +%s) - start )) s (${RELEASES[*]:-no release baked})"
