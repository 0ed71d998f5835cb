# want: 4: Duplicate vm block
vm "web" {}

vm "web" {}
