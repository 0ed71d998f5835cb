# cpu_limit: host CPUs' worth (a fraction, or a whole CPU; at most the
# host's, and every host has one).
vm "quarter" {
  cpu_limit = 0.25
}

vm "one" {
  cpu_limit = 1
}

vm "unlimited" {
}
