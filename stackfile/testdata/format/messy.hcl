network "lan" {
subnet="10.42.0.0/24"
    dhcp = true
  egress=false
}

vm "web" {
  count = 2
  cpus=1
  memory_mb     = 256
  command = ["httpd","-f"]
  env = {
      A = "1"
      LONGER_NAME = "2"
  }
    network "lan" {}
}
