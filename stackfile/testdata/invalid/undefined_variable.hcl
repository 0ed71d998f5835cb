# want: 7: Reference to undeclared input variable
variable "replicas" {
  default = 1
}

vm "web" {
  count = var.replica
}
