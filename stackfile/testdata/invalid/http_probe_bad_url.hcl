# want: 4: Invalid http probe
vm "web" {
  ready {
    http = "localhost:80/health"
  }
}
