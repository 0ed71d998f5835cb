# want: 3: Invalid restart
vm "web" {
  restart = "sometimes"
}
