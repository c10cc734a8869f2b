// Command etcd is etcd's own server entry point, built from the Go module proxy
// because Debian bookworm ships etcd 3.4, too old for kube-apiserver >= 1.31.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
