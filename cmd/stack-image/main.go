// Command stack-image builds (or finds in the cache) the built-in guest
// image of initramfs mode and prints its kernel and initramfs paths, one per
// line. `make guest-image` runs it so that the first `stack up` does not pay
// for the download and build.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	"github.com/stackvm/stack/guestimage"
)

func main() {
	var opts guestimage.Options
	flag.StringVar(&opts.CacheRoot, "cache-dir", "", "cache root (default: $STACK_CACHE_DIR, $XDG_CACHE_HOME/stack or ~/.cache/stack)")
	flag.StringVar(&opts.InitBinary, "init", "", "static stack-init binary (default: built from source)")
	flag.StringVar(&opts.KernelDeb, "kernel-deb", "", "local kernel .deb instead of apt-get download")
	flag.StringVar(&opts.Busybox, "busybox", "", "static busybox (default /bin/busybox)")
	flag.StringVar(&opts.Compression, "compression", "", "initramfs compression: none, gzip1..gzip9 (default "+guestimage.DefaultCompression+")")
	flag.Parse()
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	img, err := guestimage.Ensure(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stack-image:", err)
		os.Exit(1)
	}
	fmt.Println(img.Kernel)
	fmt.Println(img.Initramfs)
}
