# count and for_each with variables: `replicas` web servers, each published
# on its own host port (8080, 8081, ...), and one worker per queue.
#
#   stack -f examples/stacks/replicas.hcl --var replicas=3 up
stack "replicas" {}

variable "replicas" {
  type        = number
  default     = 2
  description = "how many web servers to run"
  validation {
    condition     = var.replicas >= 1 && var.replicas <= 8
    error_message = "replicas must be from 1 to 8"
  }
}

variable "queues" {
  type        = map(number)
  default     = { fast = 2, slow = 1 }
  description = "worker queue name => CPUs"
}

locals {
  subnet = "10.50.0.0/24"
}

network "lan" {
  subnet = local.subnet
}

vm "web" {
  count = var.replicas
  command = [
    "sh", "-c",
    "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
  ]
  network "lan" {
    # web-0 is 10.50.0.10, web-1 10.50.0.11, ...
    ip = cidrhost(local.subnet, 10 + count.index)
  }
  publish {
    host_port  = 8080 + count.index
    guest_port = 80
  }
  ready {
    http = "http://localhost:80/"
  }
  restart = "on-failure"
}

vm "worker" {
  for_each = var.queues
  cpus     = each.value
  command  = ["sh", "-c", "while true; do echo \"$QUEUE: working\"; sleep 5; done"]
  env = {
    QUEUE = each.key
    WEB   = join(",", [for i in range(var.replicas) : "web-${i}"])
  }
  network "lan" {}
  depends_on = [vm.web]
}
