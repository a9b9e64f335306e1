//go:build !linux

package bench

import (
	"errors"
	"os/exec"
	"time"
)

type procUsage struct {
	cpu     time.Duration
	rss     int64
	peakRSS int64
}

var errNoProc = errors.New("per-process CPU and memory are read from /proc: Linux only")

func readProc(int) (procUsage, error) { return procUsage{}, errNoProc }
func resetPeak(int)                   {}
func selfUsage() procUsage            { return procUsage{} }
func dieWithParent(*exec.Cmd)         {}
