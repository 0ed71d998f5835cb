# want: 3: Missing initramfs file
vm "web" {
  initramfs = "../files/no-such-initrd"
}
