# want: 3: Invalid type specification
variable "replicas" {
  type = integer
}
