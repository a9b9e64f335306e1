package breaker_test

import (
	"testing"
	"time"

	"github.com/understudy-ai/understudy/breaker"
)

// BenchmarkAdmission is the breaker's cost on every attempt of every
// request: the look (Admitting) and, when closed, the permission (Allow)
// and its verdict.
//
//	go test -run='^$' -bench=Admission -benchmem ./breaker/
func BenchmarkAdmission(b *testing.B) {
	b.Run("closed", func(b *testing.B) {
		br := breaker.New("p", breaker.Config{ConsecutiveFailures: 5, OpenFor: time.Minute}, nil)
		b.ReportAllocs()
		for b.Loop() {
			admit(b, br)
		}
	})
	b.Run("closed-parallel", func(b *testing.B) {
		br := breaker.New("p", breaker.Config{ConsecutiveFailures: 5, OpenFor: time.Minute}, nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				admit(b, br)
			}
		})
	})
	b.Run("open", func(b *testing.B) {
		// The skip: what a request pays for a provider whose breaker is open.
		br := breaker.New("p", breaker.Config{ConsecutiveFailures: 1, OpenFor: time.Hour}, nil)
		done, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		done(breaker.Failure)
		if br.State() != breaker.Open {
			b.Fatalf("state %s after a failure, want open", br.State())
		}
		b.ReportAllocs()
		for b.Loop() {
			if br.Admitting() {
				b.Fatal("open breaker admitting")
			}
		}
	})
}

// admit is one admission of a closed breaker, as a worker makes it before a
// call: look, allow, the verdict.
func admit(b *testing.B, br *breaker.Breaker) {
	if !br.Admitting() {
		b.Fatal("closed breaker not admitting")
	}
	done, err := br.Allow()
	if err != nil {
		b.Fatal(err)
	}
	done(breaker.Success)
}
