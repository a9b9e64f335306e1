// Package worker turns deliveries of chat requests into replies.
//
// A Pool pulls from the shared "workers" consumer with bounded concurrency
// (batches sized to its free slots, so nothing waits in a client-side buffer
// while its ack timer runs), and hands each delivery to the processing rules
// of SPEC §4: validate, claim the request id so it is answered once, run the
// provider Chain under the request's deadline, then reply and ack, put the
// request back with a growing delay when the whole chain failed, or give up
// with a failed reply and a dead letter when the deadline or the delivery
// budget is spent.
//
// A Chain tries providers in order, each call bounded by its own timeout and
// by a fair share of the time left before the deadline, with exponential
// backoff and jitter between real attempts. Providers whose breaker is open,
// or that are cooling down after a 429, are skipped at no cost. While no
// provider is available at all, the Pool stops pulling until the first one
// comes back, and requests wait in the stream.
package worker
