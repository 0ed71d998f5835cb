# An OCI image as a VM: web runs the example image's own process (a shell
# script serving a page with busybox httpd, as user www), with its own
# kernel and network; client, the built-in image, fetches the page by name.
# Build the image (an OCI layout, from this machine's files) first:
#
#   make example-image     # or: go run ./examples/images/web examples/images/web/layout
#   stack -f examples/stacks/image.hcl up
#   stack -f examples/stacks/image.hcl logs -f client
variable "image" {
  type        = string
  default     = "oci:../images/web/layout:web"
  description = "the web image: any reference stack pull takes (NAME:TAG, oci:DIR:TAG, docker-archive:FILE)"
}

stack "image" {
  description = "an OCI image's process in a VM, and a client reaching it by name"
}

network "lan" {
  subnet = "10.72.0.0/24"
}

vm "web" {
  image = var.image
  env = {
    PORT = "8080"
  }
  network "lan" {}
  ready {
    tcp = 8080
  }
}

vm "client" {
  depends_on = [vm.web]
  command = [
    "sh", "-c",
    "while true; do wget -q -O - http://web:8080/; sleep 2; done",
  ]
  network "lan" {}
}
