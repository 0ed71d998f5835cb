# Already canonical: Format must not change it.
vm "db" {
  cpus      = 2
  memory_mb = 512
}
