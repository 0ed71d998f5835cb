#!/usr/bin/env bash
# build-debian-image.sh OUTDIR: build a Debian bookworm cloud image for
# stack's cloud-init mode, without loop mounts.
#
# OUTDIR (default ${STACK_CACHE_DIR:-$HOME/.cache/stack}/images/debian-12)
# receives:
#   debian-12.raw  2 GiB sparse ext4 root filesystem (label stack-root), raw
#   vmlinuz        the image's own kernel (linux-image-cloud-amd64)
#   initrd.img     the image's own initramfs
#   key            cache key: sha256 of this script and the package list
#
# Boot with: -kernel vmlinuz -initrd initrd.img
#            -append "root=LABEL=stack-root console=ttyS0"
# The image reads its configuration from a NoCloud seed (volume id cidata).
#
# The build is skipped when OUTDIR/key matches and every file is present. It
# needs root (debootstrap), debootstrap and e2fsprogs (mkfs.ext4 -d), and
# reaches only the Debian mirror the host's apt already uses (override with
# STACK_DEBIAN_MIRROR). Everything is built in a temporary directory beside
# OUTDIR and moved into place at the end; a failed build leaves OUTDIR as it
# was.
set -euo pipefail

SUITE=bookworm
ROOT_LABEL=stack-root
IMAGE_SIZE=2G
PACKAGES="systemd-sysv,udev,kmod,cloud-init,python3-cffi-backend,ifupdown,iproute2,netbase,iputils-ping,dbus,libpam-systemd,resolvconf,openssh-server,linux-image-cloud-amd64"

OUTDIR="${1:-${STACK_CACHE_DIR:-$HOME/.cache/stack}/images/debian-12}"

log() { printf 'build-debian-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

self="$(readlink -f "${BASH_SOURCE[0]}")"
key="$( { sha256sum <"$self"; printf '%s\n%s\n%s\n' "$SUITE" "$PACKAGES" "$IMAGE_SIZE"; } | sha256sum | cut -d' ' -f1)"

if [[ -f "$OUTDIR/key" && "$(cat "$OUTDIR/key")" == "$key" &&
	-s "$OUTDIR/debian-12.raw" && -s "$OUTDIR/vmlinuz" && -s "$OUTDIR/initrd.img" ]]; then
	log "up to date: $OUTDIR"
	exit 0
fi

[[ "$(id -u)" == 0 ]] || die "must run as root (debootstrap)"
for tool in debootstrap mkfs.ext4 truncate sha256sum; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap e2fsprogs coreutils)"
done

# mirror prints the Debian archive URI that the host's apt uses for $SUITE,
# from deb822 .sources files first, then one-line sources.list entries.
mirror() {
	if [[ -n "${STACK_DEBIAN_MIRROR:-}" ]]; then
		printf '%s\n' "$STACK_DEBIAN_MIRROR"
		return
	fi
	local f uri
	shopt -s nullglob
	for f in /etc/apt/sources.list.d/*.sources; do
		# One stanza per blank-line-separated paragraph: print the URI of the
		# first stanza whose Suites has the plain suite name and whose URI is
		# not a security archive.
		uri="$(awk -v suite="$SUITE" '
			BEGIN { RS=""; FS="\n" }
			{
				uris=""; suites=""; types=""
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
					if ($i ~ /^Suites:/) { suites = " " $i " "; sub(/^ Suites:/, "", suites) }
					if ($i ~ /^Types:/)  { types = $i }
				}
				if (types !~ /(^|[ \t])deb([ \t]|$)/) next
				if (uris ~ /security/) next
				if (suites ~ ("[ \t]" suite "[ \t]")) { split(uris, u, /[ \t]+/); print u[1]; exit }
			}' "$f")"
		if [[ -n "$uri" ]]; then
			printf '%s\n' "$uri"
			return
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f "$f" ]] || continue
		uri="$(awk -v suite="$SUITE" '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i+1) == suite && $i !~ /security/) { print $i; exit }
			}' "$f")"
		if [[ -n "$uri" ]]; then
			printf '%s\n' "$uri"
			return
		fi
	done
	printf '%s\n' "http://deb.debian.org/debian"
}

MIRROR="$(mirror)"
parent="$(dirname "$OUTDIR")"
mkdir -p "$parent"
work="$(mktemp -d "$parent/.debian-12.build.XXXXXX")"

# cleanup unmounts anything debootstrap left mounted inside the build tree
# (proc, sys, a bind-mounted /dev in containers) before removing it, so the
# removal can never reach the host's /dev; --one-file-system is the second
# guard.
cleanup() {
	local m
	if [[ -d "$work" ]]; then
		while read -r m; do
			umount -l "$m" 2>/dev/null || true
		done < <(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
		rm -rf --one-file-system "$work"
	fi
}
trap cleanup EXIT

root="$work/root"
out="$work/out"
mkdir -p "$root" "$out"

log "debootstrap $SUITE from $MIRROR (takes a few minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
	tail -n 30 "$work/debootstrap.log" >&2
	die "debootstrap failed"
}

log "configuring for NoCloud"
cat >"$root/etc/cloud/cloud.cfg.d/90_stack.cfg" <<'EOF'
# Written by stack's build-debian-image.sh: read the seed from a NoCloud
# volume (label cidata) only, never probe network metadata services.
datasource_list: [ NoCloud, None ]
EOF

# minbase has no locales package: with LANG unset, cloud-init's locale module
# would run update-locale for en_US.UTF-8 and fail. C.UTF-8 is built into
# glibc, and a system locale equal to cloud-init's default needs no change.
printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"

cat >"$root/etc/fstab" <<EOF
LABEL=$ROOT_LABEL / ext4 defaults,errors=remount-ro 0 1
EOF

cat >"$root/etc/network/interfaces" <<'EOF'
# cloud-init renders the seed's network-config into interfaces.d.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
mkdir -p "$root/etc/network/interfaces.d"

# debootstrap copies the build host's resolv.conf; the VM's comes from the
# seed's nameservers instead (cloud-init's ifupdown config carries
# dns-nameservers, which resolvconf's ifupdown hook applies).
rm -f "$root/etc/resolv.conf"
ln -s ../run/resolvconf/resolv.conf "$root/etc/resolv.conf"

# openssh-server's postinst generated host keys at build time, which every VM
# made from the image would share. Each VM's host key comes from its seed
# instead (cloud-config ssh_keys, which stack generates and pins for exec);
# without one, cloud-init generates fresh keys on first boot.
rm -f "$root"/etc/ssh/ssh_host_*

printf 'debian\n' >"$root/etc/hostname"
# An empty machine-id makes systemd generate a fresh one on each VM's first
# boot, so VMs made from this image do not share one.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# Periodic jobs that only cost CPU in short-lived test VMs under TCG.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
	ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

kernel="$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)"
initrd="$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)"
[[ -n "$kernel" && -n "$initrd" ]] || die "no kernel or initrd in the image's /boot"
cp "$kernel" "$out/vmlinuz"
cp "$initrd" "$out/initrd.img"
chmod 0644 "$out/vmlinuz" "$out/initrd.img"

chroot "$root" apt-get clean >/dev/null 2>&1 || true
rm -rf --one-file-system "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/log/"*.log

log "making the ext4 image ($IMAGE_SIZE, sparse)"
truncate -s "$IMAGE_SIZE" "$out/debian-12.raw"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$root" "$out/debian-12.raw"
printf '%s\n' "$key" >"$out/key"

# Move into place: the old OUTDIR (if any) is replaced only after the new
# image is complete.
if [[ -e "$OUTDIR" ]]; then
	mv "$OUTDIR" "$work/old"
fi
mv "$out" "$OUTDIR"
log "built $OUTDIR ($(basename "$kernel"), $(basename "$initrd"))"
