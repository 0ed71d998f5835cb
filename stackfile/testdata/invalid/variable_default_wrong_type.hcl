# want: 4: Invalid value for variable
variable "replicas" {
  type    = number
  default = "many"
}
