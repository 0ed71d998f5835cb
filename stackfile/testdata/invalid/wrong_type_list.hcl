# want: 3: Incorrect attribute value type
vm "web" {
  command = "httpd -f"
}
