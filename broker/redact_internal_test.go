package broker

import (
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, url string
		secrets   []string // must not appear
		keep      string   // must appear
	}{
		{"no credentials", "nats://127.0.0.1:4222", nil, "nats://127.0.0.1:4222"},
		{"empty", "", nil, ""},
		{"user and password", "nats://alice:s3cret@nats.example.com:4222", []string{"s3cret"}, "nats.example.com:4222"},
		{"token", "nats://t0ken@nats.example.com:4222", []string{"t0ken"}, "nats.example.com:4222"},
		{"tls scheme", "tls://alice:s3cret@nats.example.com:4443", []string{"s3cret"}, "nats.example.com:4443"},
		{"websocket", "wss://alice:s3cret@nats.example.com/ws", []string{"s3cret"}, "nats.example.com/ws"},
		{"password with @", "nats://alice:p@ss@h:4222", []string{"p@ss"}, "h:4222"},
		{"several servers", "nats://a:pw1@h1:4222,nats://b:pw2@h2:4222", []string{"pw1", "pw2"}, "h2:4222"},
		{"credentials on the second server", "nats://h1:4222,nats://b:pw2@h2:4222", []string{"pw2"}, "h2:4222"},
		// nats.go accepts a server URL without a scheme (it adds nats://),
		// so credentials can come that way too.
		{"no scheme", "alice:s3cret@nats.example.com:4222", []string{"s3cret"}, "nats.example.com:4222"},
		{"no scheme, token", "t0ken@nats.example.com:4222", []string{"t0ken"}, "nats.example.com:4222"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := redact(c.url)
			for _, s := range c.secrets {
				if strings.Contains(got, s) {
					t.Errorf("redact(%q) = %q reveals %q", c.url, got, s)
				}
			}
			if !strings.Contains(got, c.keep) {
				t.Errorf("redact(%q) = %q lost %q", c.url, got, c.keep)
			}
		})
	}
}
