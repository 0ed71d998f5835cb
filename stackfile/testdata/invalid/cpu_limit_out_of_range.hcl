# want: 5: cpu_limit out of range
# want: 9: cpu_limit out of range
# want: 13: cpu_limit out of range
vm "zero" {
  cpu_limit = 0
}

vm "many" {
  cpu_limit = 100000
}

vm "negative" {
  cpu_limit = -0.5
}
