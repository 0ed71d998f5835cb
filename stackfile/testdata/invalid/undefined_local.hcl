# want: 7: Reference to undeclared local value
locals {
  cpus = 2
}

vm "web" {
  cpus = local.cpu
}
