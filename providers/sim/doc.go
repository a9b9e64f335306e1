// Package sim is a simulated OpenAI-compatible chat-completions server: the
// provider the demo, the tests and the benchmarks run against, and that
// `understudy sim` serves on its own for docker-compose.
//
// It answers POST /v1/chat/completions (and /chat/completions) like a real
// provider, with configurable latency, a random failure rate and a Mode that
// can be switched at run time or scripted in phases: ok, error (503),
// ratelimit (429 with Retry-After), hang (never answers), garbage (200 with a
// body that is not JSON), empty (200 without choices), reset (the connection
// is cut mid-response), unauthorized (401) and reject (400). It counts the
// requests it receives, so tests can assert who was called how often.
package sim
