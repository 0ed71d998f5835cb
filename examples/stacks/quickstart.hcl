# Two VMs on one network, both booting the built-in guest image: web serves
# a page with busybox httpd, client fetches it every two seconds and prints
# it on its console (see `stack logs client`).
#
#   stack -f examples/stacks/quickstart.hcl up
#   stack -f examples/stacks/quickstart.hcl logs -f client
stack "quickstart" {
  description = "busybox httpd and a wget client on one LAN"
}

network "lan" {
  subnet = "10.42.0.0/24"
}

vm "web" {
  command = [
    "sh", "-c",
    "mkdir -p /www && echo 'hello from web' > /www/index.html && exec httpd -f -p 80 -h /www",
  ]
  network "lan" {}
  ready {
    tcp = 80
  }
}

vm "client" {
  depends_on = [vm.web]
  command = [
    "sh", "-c",
    "while true; do wget -q -O - http://web/; sleep 2; done",
  ]
  network "lan" {}
}
