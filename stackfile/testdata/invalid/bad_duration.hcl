# want: 5: Invalid duration
vm "web" {
  ready {
    tcp     = 80
    timeout = "soon"
  }
}
