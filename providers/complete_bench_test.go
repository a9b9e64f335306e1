package providers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// BenchmarkComplete is one non-streaming Complete call against an httptest
// server on loopback answering a fixed OpenAI body: the client's cost of a
// call, with the server's own work (the same for every client) included.
// cpu-ns/op is the process's CPU time (user + system, every thread) per
// call, from getrusage.
//
//	go test -run='^$' -bench=Complete -benchmem -count=6 ./providers/
func BenchmarkComplete(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		drain(r)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(okBody))
	}))
	defer srv.Close()
	req := &providers.Request{Messages: []chat.Message{{Role: chat.RoleSystem, Content: "You are Lucy."},
		{Role: chat.RoleUser, Content: strings.Repeat("where is my order? ", 14)}}, MaxTokens: 256}
	for _, client := range benchClients {
		b.Run(client, func(b *testing.B) {
			p, err := providers.Build(providers.Config{Name: "bench", Kind: providers.KindOpenAI, BaseURL: srv.URL + "/v1",
				Model: "bench-model", Client: client}, 4)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				resp, err := p.Complete(ctx, req)
				if err != nil || resp.Content != "hi back" {
					b.Fatalf("Complete = %+v, %v", resp, err)
				}
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
