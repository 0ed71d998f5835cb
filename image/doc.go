// Package image turns OCI images into root file systems for VMs: it
// fetches an image from a registry, an OCI image layout or a `docker save`
// archive, applies its linux/amd64 layers in order (whiteouts, hard links,
// symlinks, ownership, modes and xattrs kept), and writes the merged tree as
// an ext4 image that the guest kernel mounts read-only as the shared lower
// layer of every VM that runs the image. The result is cached by the digest
// of the image's config, which names the uncompressed digest of every layer
// and so determines the root file system whatever transport brought it.
//
// Conversion needs no root: see ext4.go. Its contract with a crash: a
// conversion works in a private temporary directory and renames the
// finished image into place last, so a killed one leaves nothing that a
// later Pull takes for complete; a per-image lock makes concurrent pulls of
// one image, in one process or several, convert it once.
package image
