#!/usr/bin/env bash
# Export TurboDiffusion's Python package (thu-ml/TurboDiffusion, pinned commit) into .peer/TurboDiffusion/ (git-ignored),
# for the equivalence check benchmarks/td_equivalence.py and the TurboDiffusion reference benchmarks.
#
#   bash benchmarks/get_turbodiffusion.sh [MIRROR_GIT_DIR]
#
# MIRROR_GIT_DIR: a local clone or bare mirror of thu-ml/TurboDiffusion (default: $TD_MIRROR, else
# /work/.mirror/thu-ml+TurboDiffusion/repo if present, else a blob-less sparse clone from GitHub). Only `turbodiffusion/` is
# exported, without TurboT2AV, the cutlass submodule and the CUDA sources (about 1.5 MB). Nothing is built: the harness
# stubs the compiled extension (turbo_diffusion_ops), which the paths it runs do not use.
set -euo pipefail
COMMIT=aaecff54f819a646ad5e35b9bceb5b72ad16a144
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.peer/TurboDiffusion"
MIRROR="${1:-${TD_MIRROR:-/work/.mirror/thu-ml+TurboDiffusion/repo}}"
EXCLUDES=(--exclude='turbodiffusion/TurboT2AV*' --exclude='turbodiffusion/ops/cutlass*' --exclude='*.cu'
          --exclude='*.hpp' --exclude='*.cpp' --exclude='*.gif' --exclude='*.mp4')
rm -rf "$DEST"
mkdir -p "$DEST"
if git -C "$MIRROR" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null 2>&1; then
  # (a mirror without the large TurboT2AV media blobs makes git archive print "invalid object" for them: harmless)
  git -C "$MIRROR" archive --format=tar "$COMMIT" turbodiffusion 2> >(grep -v "invalid object" >&2) \
    | tar -x -C "$DEST" "${EXCLUDES[@]}"
else  # no mirror: a blob-less sparse clone of turbodiffusion/ only (no submodules, no assets)
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  git clone -q --filter=blob:none --no-checkout --sparse https://github.com/thu-ml/TurboDiffusion "$TMP/repo"
  git -C "$TMP/repo" sparse-checkout set turbodiffusion
  git -C "$TMP/repo" -c advice.detachedHead=false checkout -q "$COMMIT"
  tar -c -C "$TMP/repo" turbodiffusion | tar -x -C "$DEST" "${EXCLUDES[@]}"
fi
echo "$COMMIT" > "$DEST/COMMIT"
echo "TurboDiffusion ${COMMIT:0:12} exported to $DEST ($(du -sh "$DEST" | cut -f1))"
