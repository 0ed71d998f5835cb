# want: 3: Missing newline after argument
vm "web" {
  cpus = 1 memory_mb = 2
}
