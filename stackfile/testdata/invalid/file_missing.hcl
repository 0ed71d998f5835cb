# want: 3: Invalid function argument
vm "web" {
  cmdline = file("no-such-file.txt")
}
