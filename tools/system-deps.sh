#!/usr/bin/env bash
# The system packages the tests need, in one place (Makefile `test`, .ci/run, a Dockerfile reuse this).
# Nothing missing: prints nothing and runs no apt. Missing: as root (or with password-less sudo) installs them
# with apt-get; otherwise stops at once with the exact command to run.
set -euo pipefail

# package:command that shows it is installed (empty: ask dpkg).
# espeak-ng + sox: speech test audio; prometheus: promtool; chromium + fonts: the browser tests;
# iproute2 + util-linux: the loopback-only network namespace of the WebRTC and browser tests; nginx: the load
# balancer in front of several replicas (tests/deploy).
PACKAGES=(espeak-ng:espeak-ng sox:sox prometheus:promtool chromium:chromium fonts-dejavu-core:
          iproute2:ip util-linux:unshare nginx:nginx)

installed() {  # installed PACKAGE COMMAND
  if [[ -n $2 ]]; then
    PATH="$PATH:/usr/sbin:/sbin" command -v "$2" >/dev/null  # ip lives in /usr/sbin, off a user's PATH
  else
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
  fi
}

missing=()
for entry in "${PACKAGES[@]}"; do
  installed "${entry%%:*}" "${entry#*:}" || missing+=("${entry%%:*}")
done
((${#missing[@]} == 0)) && exit 0

install=(apt-get install -y --no-install-recommends "${missing[@]}")
if ! command -v apt-get >/dev/null; then
  echo "The tests need these system packages (Debian/Ubuntu names), missing here: ${missing[*]}" >&2
  echo "Install them with your package manager, then run make test again." >&2
  exit 1
fi
if [[ $(id -u) == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  echo "The tests need these system packages, missing here: ${missing[*]}" >&2
  echo "Install them (once, as root), then run make test again:" >&2
  echo "  sudo apt-get update && sudo ${install[*]}" >&2
  exit 1
fi
echo "Installing the system packages the tests need: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || true  # a stale index may still hold them
"${sudo[@]}" "${install[@]}" >/dev/null
