package main

import "runtime/debug"

// serveGOGC is the collector's target `serve` runs with when the
// environment sets no GOGC. A worker allocates a few hundred short-lived
// objects a request over a small live heap, so at Go's default (100) the
// collector runs often: 300 cut its CPU a request by 14-25 % for ~25 MB more
// at 2,000 in flight (docs/BENCHMARKS.md, "GOGC"). GOMEMLIMIT, when set,
// still caps the heap whatever the target.
const serveGOGC = 300

// applyServeGOGC sets serveGOGC unless lookup finds GOGC set; it reports
// whether it did.
func applyServeGOGC(lookup func(string) (string, bool)) bool {
	if _, set := lookup("GOGC"); set {
		return false
	}
	debug.SetGCPercent(serveGOGC)
	return true
}
