//go:build unix

package main

import (
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/understudy-ai/understudy/bench"
)

// A worker process started by `understudy bench --cpuprofile FILE` has
// bench.EnvCPUProfile set: its first SIGUSR1 starts a CPU profile, the
// second writes it to FILE (whole: it appears under its name once
// complete).
func init() {
	path := os.Getenv(bench.EnvCPUProfile)
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		<-sig
		f, err := os.Create(path + ".part")
		if err != nil {
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return
		}
		<-sig
		pprof.StopCPUProfile()
		if f.Close() == nil {
			_ = os.Rename(path+".part", path)
		}
	}()
}
