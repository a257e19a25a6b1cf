// Command pause is the init process of a pod sandbox. It holds the pod's
// namespaces open and does nothing else: it waits for SIGINT or SIGTERM and
// then exits 0, and, being PID 1 of the pod's PID namespace when the pod
// shares one, it reaps every orphan that is re-parented to it so that no
// zombie accumulates.
//
// mkectl packs this binary into the sandbox image at worker start (see
// src/images/pause.rs), so no node ever pulls a pause image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is reported by -version; the build may override it with -X.
var version = "mkectl-pause-1"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-v", "-version", "--version":
			fmt.Println(version)
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: %s [-version]\n", os.Args[0])
			os.Exit(2)
		}
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: not running as PID 1; only my own children are reaped")
	}

	// Subscribing installs handlers, which matters for PID 1: the kernel
	// drops signals that PID 1 has no handler for, so without these
	// SIGTERM would be ignored and only SIGKILL would stop the sandbox.
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited. SIGCHLD deliveries coalesce
// (and the channel may drop some when full), so one signal can stand for
// many exits: loop until none is left.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
