# want: 3: More than one ready probe
vm "web" {
  ready {
    tcp  = 80
    http = "http://localhost/"
  }
}
