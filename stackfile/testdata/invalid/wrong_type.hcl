# want: 3: Incorrect attribute value type
vm "web" {
  cpus = "two"
}
