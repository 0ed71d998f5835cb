# The quickstart's two VMs with the readiness bare QEMU can observe: no
# depends_on (bare QEMU starts both workloads at once) and no tcp probe
# (bare QEMU waits for the guest init's ready report). `up` of this stack
# against bare QEMU in parallel is stack's orchestration overhead alone.
stack "bench-flat" {}

network "lan" {
  subnet = "10.42.0.0/24"
}

vm "web" {
  command = [
    "sh", "-c",
    "mkdir -p /www && echo 'hello from web' > /www/index.html && exec httpd -f -p 80 -h /www",
  ]
  network "lan" {}
}

vm "client" {
  command = [
    "sh", "-c",
    "while true; do wget -q -O - http://web/; sleep 2; done",
  ]
  network "lan" {}
}
