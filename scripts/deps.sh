#!/usr/bin/env bash
# Installs what stack needs on a Debian bookworm machine, idempotently: apt
# runs only when a package is missing. Go itself is expected on PATH.
#
# Usage: scripts/deps.sh [bench-image]
#   bench-image  also the baseline of image/'s BenchmarkConvert (skopeo,
#                umoci), which the tests do not need
set -euo pipefail

packages=(
  qemu-system-x86   # the VMM
  qemu-utils        # qemu-img: copy-on-write overlays
  busybox-static    # the default guest image's userland
  e2fsprogs         # mkfs.ext4: volumes, the Debian test image, OCI image
                    # root file systems (with debugfs; e2fsck in tests)
  cpio              # unpacking initramfs images in debugging
  vde2              # vde_switch: the switch benchmark's baseline
  cloud-init        # `cloud-init schema` validates generated seeds in tests
  debootstrap       # scripts/build-debian-image.sh
  iproute2          # ip netns, TAP devices in tests
  dpkg-dev          # apt-get download / dpkg-deb for the guest kernel
)

for group in "$@"; do
  case "$group" in
    bench-image) packages+=(skopeo umoci) ;;
    *) echo "deps.sh: unknown group $group (known: bench-image)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
else
  sudo=()
fi
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
