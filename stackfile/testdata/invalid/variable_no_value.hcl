# want: 2: No value for required variable
variable "image" {
  type = string
}
