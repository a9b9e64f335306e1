package replay_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

type stored struct {
	subject, data, msgID, trace string
}

func readAll(t *testing.T, b *broker.Broker, stream string) []stored {
	t.Helper()
	var out []stored
	err := b.Scan(testCtx(t, 10*time.Second), stream, "", time.Time{}, time.Time{}, func(m *broker.Stored) error {
		out = append(out, stored{m.Subject, string(m.Data), m.Header.Get(chat.HeaderMsgID), m.Header.Get("X-Trace")})
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", stream, err)
	}
	return out
}

func TestRedrive(t *testing.T) {
	b, subjs := newBroker(t, "chat", "shadow", "shadow-c1")
	orig, shadow, shadowC1 := subjs[0], subjs[1], subjs[2]
	tr := trail{t: t, js: b.JetStream(), subj: orig}
	pub := jsPublisher{b.JetStream()}

	tr.request("c-1", "before")
	since := time.Now()
	for !time.Now().After(since) {
	}
	r1 := mustJSON(t, chat.Request{ID: "r-1", Messages: []chat.Message{{Role: chat.RoleUser, Content: "one"}}})
	h := msgID("r-1")
	h.Set("X-Trace", "abc")
	tr.raw("c-1", r1, h)
	r2 := []byte(`{"id":"r-2","messages":[{"role":"user","content":"two, no header"}]}`)
	tr.raw("c-2", r2, nil)
	garbage := []byte("\x00not json")
	gseq := tr.raw("c-3", garbage, nil)
	r3 := []byte(`{"id":"r-3","messages":[{"role":"user","content":"three"}]}`)
	h = msgID("r-3")
	h.Set("Nats-Expected-Stream", orig.Stream(chat.KindRequests)) // true of the original, false of the shadow
	tr.raw("c-1", r3, h)
	cut := time.Now()
	for !time.Now().After(cut) {
	}
	tr.request("c-1", "after")
	// The original run's replies.
	tr.ok("c-1", "r-1", "deepseek", false)
	tr.ok("c-2", "r-2", "deepseek", false)

	t.Run("window", func(t *testing.T) {
		var progress bytes.Buffer
		n, err := replay.Redrive(testCtx(t, 20*time.Second), b, pub, orig, shadow, replay.Options{Since: since, Until: cut, Progress: &progress})
		if err != nil || n != 4 {
			t.Fatalf("Redrive = %d, %v; want 4", n, err)
		}
		got := readAll(t, b, "SHADOW_REQUESTS")
		want := []stored{
			{"shadow.requests.c-1", string(r1), "r-1", "abc"},
			{"shadow.requests.c-2", string(r2), "r-2", ""},
			{"shadow.requests.c-3", string(garbage), fmt.Sprintf("seq-%d", gseq), ""},
			{"shadow.requests.c-1", string(r3), "r-3", ""},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SHADOW_REQUESTS =\n%q\nwant\n%q", got, want)
		}
		if !strings.HasSuffix(progress.String(), "4 requests republished under shadow\n") {
			t.Errorf("progress %q", progress.String())
		}
	})
	t.Run("conversation", func(t *testing.T) {
		n, err := replay.Redrive(testCtx(t, 20*time.Second), b, pub, orig, shadowC1, replay.Options{Since: since, Conversation: "c-1"})
		if err != nil || n != 3 {
			t.Fatalf("Redrive = %d, %v; want 3", n, err)
		}
		got := readAll(t, b, "SHADOW_C1_REQUESTS")
		if len(got) != 3 || got[0].data != string(r1) || got[1].data != string(r3) || got[2].msgID != "after" {
			t.Errorf("SHADOW_C1_REQUESTS = %q", got)
		}
		for _, m := range got {
			if m.subject != "shadow-c1.requests.c-1" {
				t.Errorf("subject %s", m.subject)
			}
		}
	})
	t.Run("errors", func(t *testing.T) {
		nowhere, _ := chat.NewSubjects("nowhere")
		tests := []struct {
			name    string
			to      chat.Subjects
			opt     replay.Options
			invalid bool
			want    string
		}{
			{"same prefix", orig, replay.Options{Since: since}, true, "names the same streams"},
			{"zero target", chat.Subjects{}, replay.Options{Since: since}, true, "target subjects"},
			{"bad window", shadow, replay.Options{Since: cut, Until: since}, true, "must be before until"},
			{"no target streams", nowhere, replay.Options{Since: since, Until: cut}, false, "do the nowhere streams exist?"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := replay.Redrive(testCtx(t, 20*time.Second), b, pub, orig, tt.to, tt.opt)
				if err == nil || errors.Is(err, replay.ErrInvalidOption) != tt.invalid || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Redrive: %v; want an error with %q (invalid option: %v)", err, tt.want, tt.invalid)
				}
			})
		}
	})
	t.Run("compare", func(t *testing.T) {
		// The shadow run: r-1 served by llama, r-2 failed, r-3 and the
		// unreadable one unanswered.
		st := trail{t: t, js: b.JetStream(), subj: shadow}
		st.ok("c-1", "r-1", "llama", true)
		st.failed("c-2", "r-2", "r-2", chat.CodeProvidersExhausted)
		a, err := replay.Build(testCtx(t, 20*time.Second), b, orig, replay.Options{Since: since, Until: cut})
		if err != nil {
			t.Fatal(err)
		}
		s, err := replay.Build(testCtx(t, 20*time.Second), b, shadow, replay.Options{Since: since})
		if err != nil {
			t.Fatal(err)
		}
		c := replay.Compare(a, s)
		if c.Original.Requests != 4 || c.Shadow.Requests != 4 || c.Original.OK != 2 || c.Shadow.OK != 1 || c.Shadow.Failed != 1 ||
			c.Original.Unanswered != 2 || c.Shadow.Unanswered != 2 || c.Shadow.ByProvider["llama"] != 1 {
			t.Errorf("summaries %+v / %+v", c.Original, c.Shadow)
		}
		// The unreadable request is keyed by its stream sequence, which
		// differs between the runs.
		want := replay.Agreement{BothOK: 1, SameProvider: 0, OnlyOriginalOK: 1, NeitherOK: 1, OnlyInOriginal: 1, OnlyInShadow: 1}
		if c.Agreement == nil || *c.Agreement != want {
			t.Errorf("agreement %+v, want %+v", c.Agreement, want)
		}
		var text, js bytes.Buffer
		if err := c.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if err := c.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"served by llama", "ok in the original only", "-1"} {
			if !strings.Contains(text.String(), w) {
				t.Errorf("comparison text lacks %q:\n%s", w, text.String())
			}
		}
		for _, w := range []string{`"original"`, `"shadow"`, `"both_ok": 1`, `"latency_ms"`} {
			if !strings.Contains(js.String(), w) {
				t.Errorf("comparison JSON lacks %q:\n%s", w, js.String())
			}
		}
		t.Logf("\n%s", text.String())
		if c := replay.Compare(a, nil); c.Agreement != nil || c.Shadow.Requests != 0 {
			t.Errorf("Compare with nil: %+v", c)
		}
	})
}
