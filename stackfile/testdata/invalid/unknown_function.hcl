# want: 3: Call to unknown function
vm "web" {
  cmdline = timestamp()
}
