network "lan" {
  subnet = "10.20.0.0/24"
  egress {
    allow = ["192.168.1.10", "10.0.0.0/8", "172.16.5.9/16"]
  }
}

network "open" {
  subnet = "10.21.0.0/24"
  egress = true
}
