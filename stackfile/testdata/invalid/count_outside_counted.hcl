# want: 3: Reference to "count" in non-counted context
vm "web" {
  cmdline = "n=${count.index}"
}
