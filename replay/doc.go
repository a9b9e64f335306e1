// Package replay turns what an Understudy deployment kept in its streams into
// an incident report: how many requests came in over a window, how many were
// served and by which provider, what failed or went unanswered, every
// provider attempt by outcome, when each circuit breaker opened and closed,
// end-to-end latency percentiles and a per-minute timeline. Build reads the
// four streams (requests, replies, events, dead letters) once each, in
// bounded memory, keeping only a few words per request id; the Report renders
// as JSON, as a terminal report or as one self-contained HTML page with an
// SVG chart. Redrive republishes a window's requests, byte for byte, under
// another subject prefix so that a shadow worker pool can serve them again,
// and Compare sets the two runs side by side.
package replay
