// Package bench is the measuring instrument behind `understudy bench`: it
// runs the real pipeline — `understudy serve` worker processes re-executed
// from the same binary, a JetStream server, simulated providers over real
// HTTP and a load generator — and reports throughput, latency, CPU per
// request (per process, from the kernel's accounting), memory and the
// messages stored per request, each scenario next to a raw JetStream
// request→reply loop measured on the same server in the same run, so the
// figures mean the same on any machine. docs/BENCHMARKS.md describes the
// method and its results.
package bench
