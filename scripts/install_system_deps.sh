#!/usr/bin/env bash
# Debian packages streamlens needs: codecs and the ffmpeg CLI (benchmarks), espeak-ng + sox (test
# speech), Apertium with the eng-spa, spa-cat and fra-cat pairs (offline translation), Chromium
# (browser tests), DejaVu fonts (Unicode captions), nginx with its RTMP module (the platform RTMP
# outputs are tested against), npm (hls.js for the HLS viewer; not asked for where Node.js already
# brings it). Runs `apt-get update` once, and only when something is missing.
set -euo pipefail
# build-essential: scripts/install_triton.sh compiles numpy<2 for Python 3.13 (no wheel exists).
PACKAGES=(ffmpeg espeak-ng sox apertium apertium-eng-spa apertium-spa-cat apertium-fra-cat chromium fonts-dejavu-core python3-venv build-essential nginx libnginx-mod-rtmp)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
