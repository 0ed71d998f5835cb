# Every block and most attributes, with functions and references.
stack "full-demo" {
  description = "every feature of the stack file"
}

variable "replicas" {
  type        = number
  default     = 3
  description = "web replicas"
  validation {
    condition     = var.replicas > 0 && var.replicas < 10
    error_message = "replicas must be from 1 to 9"
  }
}

variable "colours" {
  type    = map(string)
  default = { blue = "10.42.1.20", green = "10.42.1.21" }
}

variable "token" {
  type      = string
  default   = "s3cret"
  sensitive = true
}

locals {
  base_subnet = "10.42.0.0/16"
  lan_subnet  = cidrsubnet(local.base_subnet, 8, 0)
  dmz_subnet  = cidrsubnet(local.base_subnet, 8, 1)
  workers     = toset(["alpha", "beta"])
  motd        = trimspace(file("motd.txt"))
  settings    = { level = "debug", ports = [80, 443] }
}

network "lan" {
  subnet = local.lan_subnet
}

network "dmz" {
  subnet  = local.dmz_subnet
  gateway = cidrhost(local.dmz_subnet, 254)
  dhcp    = false
  dns     = false
  egress  = true
}

volume "pgdata" {
  size = "1GiB"
}

volume "raw" {
  size   = 10485760
  format = "raw"
}

vm "web" {
  count     = var.replicas
  cpus      = 2
  memory_mb = 512
  cmdline   = "quiet"
  command   = ["httpd", "-f", "-p", "80"]
  env = {
    INDEX    = tostring(count.index)
    GREETING = upper("hi")
    SETTINGS = jsonencode(local.settings)
    TOKEN    = base64encode(var.token)
  }

  network "lan" {
    ip = cidrhost(network.lan.subnet, 10 + count.index)
  }
  network "dmz" {
    mac = format("52:54:00:00:01:%02x", count.index)
  }

  disk "scratch" {
    size       = "512MiB"
    guest_path = "/scratch"
  }

  publish {
    host_port  = 8080 + count.index
    guest_port = 80
  }
  publish {
    host_port  = 5353 + count.index
    guest_port = 53
    protocol   = "udp"
  }

  depends_on = [vm.db]
  ready {
    tcp     = 80
    timeout = "60s"
  }
  restart = "on-failure"
}

vm "edge" {
  for_each = var.colours
  network "dmz" {
    ip = replace(each.value, "10.42.1.", "10.42.1.1")
  }
  env = {
    COLOUR = each.key
    MOTD   = local.motd
  }
  ready {
    http    = "http://localhost:80/health"
    timeout = "2m"
  }
  hypervisor = "qemu"
  machine    = "microvm"
}

vm "worker" {
  for_each = local.workers
  command  = ["sh", "-c", "echo ${each.key}=${each.value}"]
  shared_dir "src" {
    host_path  = "../files/shared"
    guest_path = "/src/"
    read_only  = true
  }
  network "lan" {}
  ready {
    exec    = ["test", "-f", "/tmp/ready"]
    timeout = "1m30s"
  }
  restart = "always"
}

vm "db" {
  kernel    = "../files/vmlinuz"
  initramfs = "../files/initrd.img"
  root_disk = "../files/disk.raw"
  cloud_init {
    user_data = templatefile("user-data.tftpl", {
      packages = ["postgresql", "curl"]
      motd     = local.motd
    })
    ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host"]
  }
  disk "data" {
    volume     = volume.pgdata
    guest_path = "/var/lib/postgresql"
  }
  disk "raw" {
    volume = "raw"
  }
  network "lan" {
    ip  = "10.42.0.5"
    mac = "52:54:00:AB:CD:EF"
  }
  memory_mb = try(tonumber("x"), 1024)
  cpus      = can(regex("^db", "db-main")) ? 2 : 1
}
