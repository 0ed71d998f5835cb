# Cloud-init mode: a Debian cloud image booted with its own kernel and
# initrd from a copy-on-write overlay (the base image is never written), a
# persistent volume mounted at /data, and user data merged with what stack
# generates. Build the image with `make debian-image`, then:
#
#   stack -f examples/stacks/cloud-init.hcl \
#     --var debian_image_dir=$HOME/.cache/stack/images/debian-12 up
variable "debian_image_dir" {
  type        = string
  description = "directory with vmlinuz, initrd.img and debian-12.raw (scripts/build-debian-image.sh)"
}

stack "cloud-init" {}

network "lan" {
  subnet = "10.70.0.0/24"
}

volume "data" {
  size = "256MiB"
}

vm "debian" {
  kernel    = "${var.debian_image_dir}/vmlinuz"
  initramfs = "${var.debian_image_dir}/initrd.img"
  root_disk = "${var.debian_image_dir}/debian-12.raw"
  memory_mb = 512

  cloud_init {
    # A #cloud-config document: the header line, then YAML.
    user_data = "#cloud-config\n${yamlencode({
      write_files = [{
        path    = "/etc/motd"
        content = "booted by stack\n"
      }]
      runcmd = [["sh", "-c", "date > /data/first-boot"]]
    })}"
  }

  disk "data" {
    volume     = volume.data
    guest_path = "/data"
  }

  network "lan" {
    ip = "10.70.0.10"
  }

  ready {
    timeout = "5m"
  }
}
