// Package breaker is the circuit breaker every provider call goes through.
//
// It wraps github.com/mercari/go-circuitbreaker behind a two-step API in the
// manner of sony/gobreaker: Allow asks for permission and returns a done
// callback that records the call's verdict once it is known. The wrapper adds
// the one thing the library lacks: in the half-open state exactly ONE request
// (the probe) is let through until its verdict is known; everybody else is
// told the breaker is open, which costs them no waiting. The probe's success
// closes the breaker, its failure reopens it for another OpenFor.
//
// A verdict that arrives after the breaker has changed state (a slow call
// admitted while closed that finishes after the breaker opened, say) is
// dropped, so it cannot close a breaker that a probe should decide.
package breaker
