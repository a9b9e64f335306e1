// Package providers talks to LLM providers. A Provider makes one chat
// completion call and either answers or returns an *Error that says how the
// call failed (an Outcome of the wire contract, the HTTP status, and a
// Retry-After for rate limits), so the worker's chain can decide what the
// failure means for the breaker without knowing the wire format.
//
// Two kinds exist: "openai" for any OpenAI-compatible /chat/completions
// endpoint (DeepSeek, Together, Groq, Fireworks, DashScope, vLLM, Ollama),
// by default on a lean client of its own on net/http (lean.go; streamed
// calls in stream.go), or, with client openai-go, on the official openai-go
// SDK with its own retries switched off; and "sim", the same client pointed
// at an in-process simulated provider (package sim).
package providers
