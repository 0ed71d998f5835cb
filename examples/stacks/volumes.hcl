# Storage: a persistent volume that survives `stack down` (unless
# `down --volumes`), a scratch disk deleted with its VM, and a read-only
# host directory shared into the guest.
stack "volumes" {}

network "lan" {
  subnet = "10.60.0.0/24"
  egress = true
}

volume "data" {
  size = "1GiB"
}

vm "store" {
  memory_mb = 512
  command = [
    "sh", "-c",
    "date >> /data/boots.log && cat /data/boots.log && ls /examples && exec sleep 3600",
  ]

  disk "data" {
    volume     = volume.data
    guest_path = "/data"
  }
  disk "tmp" {
    size       = "256MiB"
    guest_path = "/scratch"
  }
  shared_dir "examples" {
    host_path  = "." # this directory, relative to this file
    guest_path = "/examples"
    read_only  = true
  }

  network "lan" {
    ip  = "10.60.0.10"
    mac = "52:54:00:60:00:10"
  }
  publish {
    host_port  = 2222
    guest_port = 22
  }
  restart = "always"
}
