package broker_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
)

func seqs(ms []*broker.Stored) []uint64 {
	out := []uint64{}
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	out := []uint64{}
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// publishBatches stores three batches of three requests on c1, c2, c3 (seqs
// 1-3, 4-6, 7-9), each batch stored strictly after the previous one: before
// each batch the test waits, by reading the stored times back, until the
// clock has moved past the previous batch's last time.
func publishBatches(t *testing.T, b *broker.Broker) (first [3]time.Time) {
	t.Helper()
	ctx := testCtx(t)
	var last time.Time
	for batch := range 3 {
		if batch > 0 {
			poll.Until(t, 5*time.Second, "the clock to pass the last stored time", func() bool {
				return time.Now().After(last.Add(time.Millisecond))
			})
		}
		for i, conv := range []string{"c1", "c2", "c3"} {
			ack := publish(t, b, subj.Request(conv), fmt.Appendf(nil, "b%d-%s", batch, conv), nil)
			m, err := b.Request(ctx, ack.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first[batch] = m.Time
				if batch > 0 && !m.Time.After(last) {
					t.Fatalf("test setup: batch %d stored at %v, not after the previous batch's %v", batch, m.Time, last)
				}
			}
			last = m.Time
		}
	}
	return first
}

func TestScanWindowsAndFilters(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	first := publishBatches(t, b)
	all := scanAll(t, b, chat.StreamRequests, "", time.Time{}, time.Time{})
	if !slices.Equal(seqs(all), seqRange(1, 9)) {
		t.Fatalf("full scan = %v", seqs(all))
	}
	for i, m := range all {
		conv := []string{"c1", "c2", "c3"}[i%3]
		if m.Subject != subj.Request(conv) || string(m.Data) != fmt.Sprintf("b%d-%s", i/3, conv) || m.Time.IsZero() {
			t.Errorf("message %d = %s %q %v", m.Seq, m.Subject, m.Data, m.Time)
		}
		if i > 0 && m.Time.Before(all[i-1].Time) {
			t.Errorf("message %d stored before message %d", m.Seq, all[i-1].Seq)
		}
	}
	lastTime := all[8].Time
	zero := time.Time{}
	cases := []struct {
		name         string
		filter       string
		since, until time.Time
		want         []uint64
	}{
		{"everything", "", zero, zero, seqRange(1, 9)},
		{"since batch 2 (inclusive)", "", first[1], zero, seqRange(4, 9)},
		{"until batch 2 (exclusive)", "", zero, first[1], seqRange(1, 3)},
		{"batch 2 only", "", first[1], first[2], seqRange(4, 6)},
		{"since batch 3", "", first[2], zero, seqRange(7, 9)},
		{"since the last message", "", lastTime, zero, []uint64{9}},
		{"since after the last message", "", lastTime.Add(time.Nanosecond), zero, []uint64{}},
		{"until the first message", "", zero, all[0].Time, []uint64{}},
		{"empty window", "", first[1], first[1], []uint64{}},
		{"until far in the future", "", zero, time.Now().Add(time.Hour), seqRange(1, 9)},
		{"since long ago", "", time.Now().Add(-time.Hour), zero, seqRange(1, 9)},
		{"one conversation", "chat.requests.c2", zero, zero, []uint64{2, 5, 8}},
		{"one conversation in batch 2 and 3", "chat.requests.c1", first[1], zero, []uint64{4, 7}},
		{"one conversation in batch 2", "chat.requests.c3", first[1], first[2], []uint64{6}},
		{"wildcard filter", "chat.requests.*", first[2], zero, seqRange(7, 9)},
		{"a filter matching nothing", "chat.requests.nobody", zero, zero, []uint64{}},
		{"a filter matching nothing in a window", "chat.requests.nobody", first[1], first[2], []uint64{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := scanAll(t, b, chat.StreamRequests, c.filter, c.since, c.until)
			if !slices.Equal(seqs(got), c.want) {
				t.Errorf("Scan(filter %q, since %v, until %v) = %v, want %v", c.filter, c.since, c.until, seqs(got), c.want)
			}
		})
	}
}

func TestScanEmptyAndMissing(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	for _, s := range []string{chat.StreamReplies, chat.StreamDead, chat.StreamEvents} {
		if got := scanAll(t, b, s, "", time.Time{}, time.Time{}); len(got) != 0 {
			t.Errorf("Scan of empty %s = %d messages", s, len(got))
		}
		if got := scanAll(t, b, s, "", time.Now().Add(-time.Hour), time.Now()); len(got) != 0 {
			t.Errorf("windowed Scan of empty %s = %d messages", s, len(got))
		}
	}
	err := b.Scan(testCtx(t), "NO_SUCH_STREAM", "", time.Time{}, time.Time{}, func(*broker.Stored) error { return nil })
	if err == nil {
		t.Errorf("Scan of a missing stream: no error")
	}
}

func TestScanStopsOnError(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	const n = 1500
	publishMany(t, b, n)
	stop := errors.New("enough")
	for _, at := range []int{1, 2, broker.ScanBatch, broker.ScanBatch + 1, 1000, n} {
		t.Run(fmt.Sprintf("after %d", at), func(t *testing.T) {
			calls := 0
			err := b.Scan(testCtx(t), chat.StreamRequests, "", time.Time{}, time.Time{}, func(s *broker.Stored) error {
				calls++
				if s.Seq != uint64(calls) {
					t.Fatalf("call %d got seq %d", calls, s.Seq)
				}
				if calls == at {
					return fmt.Errorf("wrapped: %w", stop)
				}
				return nil
			})
			if !errors.Is(err, stop) {
				t.Errorf("Scan returned %v, want fn's error", err)
			}
			if calls != at {
				t.Errorf("fn called %d times after returning an error at call %d", calls, at)
			}
		})
	}
}

// publishMany stores n requests alternately on c0 (odd seqs) and c1 (even seqs),
// without waiting for each acknowledgement.
func publishMany(t *testing.T, b *broker.Broker, n int) {
	t.Helper()
	js := b.JetStream()
	for i := range n {
		if _, err := js.PublishAsync(subj.Request(fmt.Sprintf("c%d", i%2)), fmt.Appendf(nil, "%d", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-testCtx(t).Done():
		t.Fatal("async publishes not acknowledged")
	}
	if got := streamInfo(t, b, chat.StreamRequests).State.Msgs; got != uint64(n) {
		t.Fatalf("stored %d of %d", got, n)
	}
}

func TestScanMoreThanOneBatch(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	const n = 1500
	publishMany(t, b, n)

	t.Run("all", func(t *testing.T) {
		got := scanAll(t, b, chat.StreamRequests, "", time.Time{}, time.Time{})
		if len(got) != n {
			t.Fatalf("Scan read %d of %d", len(got), n)
		}
		for i, m := range got {
			if m.Seq != uint64(i+1) || string(m.Data) != fmt.Sprint(i+1) {
				t.Fatalf("message %d: seq %d data %q (gap or reorder)", i, m.Seq, m.Data)
			}
		}
	})
	t.Run("filtered", func(t *testing.T) {
		got := scanAll(t, b, chat.StreamRequests, "chat.requests.c1", time.Time{}, time.Time{})
		if len(got) != n/2 {
			t.Fatalf("filtered Scan read %d of %d", len(got), n/2)
		}
		for i, m := range got {
			if want := uint64(2 * (i + 1)); m.Seq != want || m.Subject != "chat.requests.c1" {
				t.Fatalf("message %d: seq %d on %s, want seq %d", i, m.Seq, m.Subject, want)
			}
		}
	})
	t.Run("until a time in the middle", func(t *testing.T) {
		m, err := b.Request(testCtx(t), 1000)
		if err != nil {
			t.Fatal(err)
		}
		got := scanAll(t, b, chat.StreamRequests, "", time.Time{}, m.Time)
		// Messages stored in the same nanosecond as seq 1000 are excluded
		// with it; everything before is included, in order.
		if len(got) == 0 || len(got) >= 1000 {
			t.Fatalf("Scan until seq 1000's time read %d", len(got))
		}
		for i, s := range got {
			if s.Seq != uint64(i+1) || !s.Time.Before(m.Time) {
				t.Fatalf("message %d: seq %d at %v", i, s.Seq, s.Time)
			}
		}
		if next, err := b.Request(testCtx(t), uint64(len(got)+1)); err != nil || next.Time.Before(m.Time) {
			t.Errorf("Scan stopped at seq %d, but seq %d is before until (%v)", len(got), len(got)+1, err)
		}
	})
}

// The zero until means the end of the stream when the scan started:
// messages stored during the scan are not read.
func TestScanStopsAtTheEndWhenStarted(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	for range 5 {
		publish(t, b, subj.Request("c1"), []byte("x"), nil)
	}
	var got []uint64
	err := b.Scan(testCtx(t), chat.StreamRequests, "", time.Time{}, time.Time{}, func(s *broker.Stored) error {
		if s.Seq == 1 {
			for range 3 {
				publish(t, b, subj.Request("c1"), []byte("late"), nil)
			}
		}
		got = append(got, s.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, seqRange(1, 5)) {
		t.Errorf("Scan read %v, want 1-5 (the messages stored when it started)", got)
	}
}
