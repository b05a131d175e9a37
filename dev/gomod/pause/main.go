// Command pause is the sandbox ("pause") container of the local platform's real node. It
// holds a pod's namespaces for as long as the pod lives, reaps orphans when the pod shares
// its PID namespace (it is PID 1 then), and exits on SIGTERM or SIGINT. Built here and
// imported into the node's containerd, because no registry can be reached to pull one.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		reapOrphans()
	}
}

func reapOrphans() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
