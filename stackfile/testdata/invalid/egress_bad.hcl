# want: 5: Invalid egress allow entry
# want: 12: Conflicting egress settings
network "lan" {
  subnet = "10.20.0.0/24"
  egress { allow = ["192.168.1.300"] }
}

network "both" {
  subnet = "10.21.0.0/24"
  egress = false

  egress {
    allow = []
  }
}
