// Package broker is Understudy's only door to NATS JetStream. It connects to
// a NATS server (or starts an embedded one when no URL is configured),
// creates or updates the four streams, the shared "workers" pull consumer and
// the request-claim bucket idempotently, and offers the few operations the
// rest of the program needs: fetch deliveries, publish replies, dead letters,
// events and status, claim a request id so it is answered once, and scan a
// stream over a time window for replay.
//
// Everything JetStream-specific stays here; the worker sees Delivery values
// and a handful of methods.
package broker
