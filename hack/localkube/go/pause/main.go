// Command pause is the sandbox ("pause") container of localkube's real node: it holds a pod's
// namespaces, reaps the orphans the pod's processes leave behind, and exits when told to.
// No registry is reachable here, so the upstream image cannot be pulled; this is its local stand-in.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
