package replay

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// history is a generated trail: the messages of the four streams, each in
// stream order, with stored times spread over many minutes.
type history struct {
	requests, replies, dead, events []*broker.Stored
}

// genHistory makes a trail of n requests and what became of them: ok or
// failed replies (keyed by id or by invalid-<seq>), dead letters with and
// without a reply (found by id or by sequence only, on a conversation or on
// _invalid), duplicates of both, replies to requests outside the window,
// retries and attempts, unreadable requests.
func genHistory(rng *rand.Rand, subj chat.Subjects, start time.Time, n int) history {
	var h history
	at := func(base time.Time, spread time.Duration) time.Time {
		return base.Add(time.Duration(rng.Int64N(int64(spread))))
	}
	hdr := func(kv ...string) nats.Header {
		out := nats.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				out.Set(kv[i], kv[i+1])
			}
		}
		return out
	}
	var seq uint64
	for i := range n {
		seq++
		reqAt := at(start, 40*time.Minute)
		conv := fmt.Sprintf("c-%d", rng.IntN(4))
		id := fmt.Sprintf("r-%d", rng.IntN(n)) // some ids repeat
		data, _ := json.Marshal(chat.Request{ID: id, Messages: []chat.Message{{Role: "user", Content: "x"}}})
		token := conv
		switch rng.IntN(10) {
		case 0:
			data, id = []byte("not json"), "" // unreadable: invalid-<seq>
		case 1:
			token = "bad~" + strconv.Itoa(i) // not a conversation id
		}
		h.requests = append(h.requests, &broker.Stored{Subject: subj.Request(token), Data: data, Seq: seq, Time: reqAt})
		key := id
		if key == "" {
			key = invalidKey(seq)
		}
		replyAt := at(reqAt, 5*time.Minute)
		reply := func(status string) {
			r := chat.Reply{ID: id, ConversationID: conv, Status: status, Provider: []string{"a", "b", "c"}[rng.IntN(3)], Degraded: rng.IntN(2) == 0}
			if status == chat.StatusFailed {
				r.Provider = ""
				r.Error = &chat.ErrorBody{Code: []string{chat.CodeDeadlineExceeded, chat.CodeProvidersExhausted, ""}[rng.IntN(3)]}
			}
			data, _ := json.Marshal(r)
			msgID := key
			if rng.IntN(5) == 0 {
				msgID = "" // no header: matched by the body's id
			}
			h.replies = append(h.replies, &broker.Stored{Subject: subj.Reply(conv), Data: data, Time: replyAt, Header: hdr(chat.HeaderMsgID, msgID)})
		}
		dead := func() {
			d := token
			if !chat.ValidConversationID(token) {
				d = chat.InvalidToken
			}
			reqID := id
			if rng.IntN(3) == 0 {
				reqID = "" // found by sequence only
			}
			h.dead = append(h.dead, &broker.Stored{Subject: subj.Dead(d), Data: data, Time: replyAt,
				Header: hdr(chat.HeaderRequestID, reqID, chat.HeaderStreamSeq, strconv.FormatUint(seq, 10),
					chat.HeaderCode, []string{chat.CodeInvalidRequest, chat.CodeProvidersExhausted, ""}[rng.IntN(3)])})
		}
		switch rng.IntN(7) {
		case 0: // unanswered
		case 1:
			reply(chat.StatusOK)
		case 2:
			reply(chat.StatusOK)
			reply(chat.StatusOK) // a duplicate
		case 3:
			reply(chat.StatusFailed)
			dead()
		case 4:
			dead() // no reply
		case 5:
			reply("weird")
		case 6:
			reply(chat.StatusFailed)
		}
		for range rng.IntN(3) {
			ev := chat.Event{Type: chat.EventRetry, RequestID: id, ConversationID: conv}
			if rng.IntN(2) == 0 {
				ev = chat.Event{Type: chat.EventAttempt, RequestID: id, ConversationID: conv, Provider: "a", Outcome: chat.OutcomeError}
			}
			data, _ := json.Marshal(ev)
			h.events = append(h.events, &broker.Stored{Subject: subj.Event(ev.Type, conv), Data: data, Time: at(reqAt, 3*time.Minute)})
		}
	}
	// A reply to a request outside the window.
	data, _ := json.Marshal(chat.Reply{ID: "elsewhere", Status: chat.StatusOK, Provider: "a"})
	h.replies = append(h.replies, &broker.Stored{Subject: subj.Reply("c-0"), Data: data, Time: start, Header: hdr(chat.HeaderMsgID, "elsewhere")})
	for _, s := range [][]*broker.Stored{h.requests, h.replies, h.dead, h.events} {
		slices.SortStableFunc(s, func(x, y *broker.Stored) int { return x.Time.Compare(y.Time) })
	}
	return h
}

// TestCategoriesSumToRequests: over generated histories, ok + failed +
// unanswered = requests, in total and in every minute, and failed_by_code
// sums to failed; the comparison's summary agrees.
func TestCategoriesSumToRequests(t *testing.T) {
	subj, _ := chat.NewSubjects("chat")
	start := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	for i := range 300 {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		h := genHistory(rng, subj, start, 1+rng.IntN(120))
		opt, err := Options{Until: start.Add(time.Hour)}.normalize(start)
		if err != nil {
			t.Fatal(err)
		}
		b := newBuilder(subj, opt)
		for _, s := range []struct {
			msgs []*broker.Stored
			fn   func(*broker.Stored) error
		}{{h.requests, b.request}, {h.replies, b.reply}, {h.dead, b.dead}, {h.events, b.event}} {
			for _, m := range s.msgs {
				if err := s.fn(m); err != nil {
					t.Fatal(err)
				}
			}
		}
		r := b.report()
		if err := sums(r); err != nil {
			t.Fatalf("history %d (%d requests): %v", i, len(h.requests), err)
		}
		if c := Compare(r, r).Original; c.OK+c.Failed+c.Unanswered != c.Requests {
			t.Fatalf("history %d: comparison summary %+v does not add up", i, c)
		}
	}
}

func sums(r *Report) error {
	if got := r.OK + r.Failed + r.Unanswered; got != r.Requests {
		return fmt.Errorf("ok %d + failed %d + unanswered %d = %d, want requests %d", r.OK, r.Failed, r.Unanswered, got, r.Requests)
	}
	codes := 0
	for _, n := range r.FailedByCode {
		codes += n
	}
	if codes != r.Failed {
		return fmt.Errorf("failed_by_code %v sums to %d, want failed %d", r.FailedByCode, codes, r.Failed)
	}
	total := 0
	for _, m := range r.Timeline {
		ok := 0
		for _, n := range m.OK {
			ok += n
		}
		if ok+m.Failed+m.Unanswered != m.Requests {
			return fmt.Errorf("minute %s: ok %d + failed %d + unanswered %d != requests %d", m.Start, ok, m.Failed, m.Unanswered, m.Requests)
		}
		total += m.Requests
	}
	if total != r.Requests {
		return fmt.Errorf("timeline requests sum to %d, want %d", total, r.Requests)
	}
	return nil
}
