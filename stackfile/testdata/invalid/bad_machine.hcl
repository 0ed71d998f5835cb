# want: 3: Invalid machine
vm "web" {
  machine = "pc"
}
