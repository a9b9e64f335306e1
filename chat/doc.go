// Package chat is Understudy's wire contract: the JSON of requests, replies
// and events, the subjects they travel on, and the validation that decides
// whether a request can be served at all.
//
// Everything a chat API, a worker or the replay report needs to agree on
// lives here, so that the three never drift apart. The package has no
// dependency on NATS: subjects are plain strings built from a Subjects value.
package chat
