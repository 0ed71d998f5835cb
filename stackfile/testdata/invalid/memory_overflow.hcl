# want: 3: memory_mb out of range
vm "web" {
  memory_mb = 1e30
}
