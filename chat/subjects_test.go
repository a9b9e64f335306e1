package chat_test

import (
	"strings"
	"testing"

	"github.com/understudy-ai/understudy/chat"
)

func TestValidConversationID(t *testing.T) {
	cases := []struct {
		id   string
		want bool
	}{
		{"c-42", true},
		{"a", true},
		{"Z", true},
		{"0", true},
		{"_", true},
		{"-", true},
		{"AZaz09_-", true},
		{"_invalid", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"a.b", false},
		{".", false},
		{"*", false},
		{">", false},
		{"a*", false},
		{"a>", false},
		{"a b", false},
		{" a", false},
		{"a\t", false},
		{"a\n", false},
		{"a\x00", false},
		{"a/b", false},
		{"a:b", false},
		{"café", false},
		{"é", false},
		{"\xff", false},
	}
	for _, tc := range cases {
		t.Run(tc.id, func(t *testing.T) {
			if got := chat.ValidConversationID(tc.id); got != tc.want {
				t.Errorf("ValidConversationID(%q) = %v, want %v", tc.id, got, tc.want)
			}
		})
	}
}

func TestValidatePrefix(t *testing.T) {
	cases := []struct {
		prefix string
		ok     bool
	}{
		{"chat", true},
		{"shadow.v2", true},
		{"a.b.c", true},
		{"my-app_1", true},
		{"", false},
		{"a.*", false},
		{"*", false},
		{">", false},
		{"a.>", false},
		{"a..b", false},
		{".a", false},
		{"a.", false},
		{"a b", false},
		{"chat\n", false},
		{strings.Repeat("p", 129), false},
		{strings.Repeat("p", 128), true},
	}
	for _, tc := range cases {
		t.Run(tc.prefix, func(t *testing.T) {
			err := chat.ValidatePrefix(tc.prefix)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidatePrefix(%q) = %v, want ok=%v", tc.prefix, err, tc.ok)
			}
			s, nerr := chat.NewSubjects(tc.prefix)
			if (nerr == nil) != tc.ok {
				t.Fatalf("NewSubjects(%q) error = %v, want ok=%v", tc.prefix, nerr, tc.ok)
			}
			if tc.ok && s.Prefix() != tc.prefix {
				t.Errorf("Prefix() = %q, want %q", s.Prefix(), tc.prefix)
			}
			if !tc.ok && s != (chat.Subjects{}) {
				t.Errorf("NewSubjects(%q) returned a non-zero Subjects with its error", tc.prefix)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	cases := []struct {
		prefix                                      string
		request, reply, dead, status                string
		eventAttempt, eventBreaker                  string
		allRequests, allReplies, allEvents, allDead string
		streamReq, streamRep, streamEv, streamDead  string
		streamClaims                                string
	}{
		{
			prefix:  "chat",
			request: "chat.requests.c-42", reply: "chat.replies.c-42", dead: "chat.dead.c-42", status: "chat.status.c-42",
			eventAttempt: "chat.events.attempt.c-42", eventBreaker: "chat.events.breaker.deepseek",
			allRequests: "chat.requests.*", allReplies: "chat.replies.*", allEvents: "chat.events.>", allDead: "chat.dead.*",
			streamReq: "CHAT_REQUESTS", streamRep: "CHAT_REPLIES", streamEv: "CHAT_EVENTS", streamDead: "CHAT_DEAD",
			streamClaims: "CHAT_CLAIMS",
		},
		{
			prefix:  "shadow.v2",
			request: "shadow.v2.requests.c-42", reply: "shadow.v2.replies.c-42", dead: "shadow.v2.dead.c-42", status: "shadow.v2.status.c-42",
			eventAttempt: "shadow.v2.events.attempt.c-42", eventBreaker: "shadow.v2.events.breaker.deepseek",
			allRequests: "shadow.v2.requests.*", allReplies: "shadow.v2.replies.*", allEvents: "shadow.v2.events.>", allDead: "shadow.v2.dead.*",
			streamReq: "SHADOW_V2_REQUESTS", streamRep: "SHADOW_V2_REPLIES", streamEv: "SHADOW_V2_EVENTS", streamDead: "SHADOW_V2_DEAD",
			streamClaims: "SHADOW_V2_CLAIMS",
		},
		{
			prefix:  "my-app",
			request: "my-app.requests.c-42", reply: "my-app.replies.c-42", dead: "my-app.dead.c-42", status: "my-app.status.c-42",
			eventAttempt: "my-app.events.attempt.c-42", eventBreaker: "my-app.events.breaker.deepseek",
			allRequests: "my-app.requests.*", allReplies: "my-app.replies.*", allEvents: "my-app.events.>", allDead: "my-app.dead.*",
			streamReq: "MY_APP_REQUESTS", streamRep: "MY_APP_REPLIES", streamEv: "MY_APP_EVENTS", streamDead: "MY_APP_DEAD",
			streamClaims: "MY_APP_CLAIMS",
		},
	}
	for _, tc := range cases {
		t.Run(tc.prefix, func(t *testing.T) {
			s, err := chat.NewSubjects(tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ what, got, want string }{
				{"Request", s.Request("c-42"), tc.request},
				{"Reply", s.Reply("c-42"), tc.reply},
				{"Dead", s.Dead("c-42"), tc.dead},
				{"Status", s.Status("c-42"), tc.status},
				{"Event(attempt)", s.Event(chat.EventAttempt, "c-42"), tc.eventAttempt},
				{"Event(breaker)", s.Event(chat.EventBreaker, "deepseek"), tc.eventBreaker},
				{"AllRequests", s.AllRequests(), tc.allRequests},
				{"AllReplies", s.AllReplies(), tc.allReplies},
				{"AllEvents", s.AllEvents(), tc.allEvents},
				{"AllDead", s.AllDead(), tc.allDead},
				{"Stream(requests)", s.Stream(chat.KindRequests), tc.streamReq},
				{"Stream(replies)", s.Stream(chat.KindReplies), tc.streamRep},
				{"Stream(events)", s.Stream(chat.KindEvents), tc.streamEv},
				{"Stream(dead)", s.Stream(chat.KindDead), tc.streamDead},
				{"Stream(claims)", s.Stream(chat.KindClaims), tc.streamClaims},
			} {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
			// Every event subject falls under the events filter, and every
			// conversation subject is ConversationOf'd back to its token.
			for _, ev := range []chat.EventType{chat.EventAttempt, chat.EventRetry, chat.EventDead, chat.EventBreaker} {
				if sub := s.Event(ev, "k"); !strings.HasPrefix(sub, strings.TrimSuffix(s.AllEvents(), ">")) {
					t.Errorf("Event(%s) = %q is not under %q", ev, sub, s.AllEvents())
				}
			}
			for _, sub := range []string{s.Request("c-42"), s.Reply("c-42"), s.Dead("c-42"), s.Status("c-42")} {
				if got := s.ConversationOf(sub); got != "c-42" {
					t.Errorf("ConversationOf(%q) = %q, want c-42", sub, got)
				}
			}
		})
	}
}

// TestDefaultStreamConstants checks the exported names agree with the
// default prefix's Stream.
func TestDefaultStreamConstants(t *testing.T) {
	s, err := chat.NewSubjects("chat")
	if err != nil {
		t.Fatal(err)
	}
	for kind, want := range map[string]string{
		chat.KindRequests: chat.StreamRequests, chat.KindReplies: chat.StreamReplies,
		chat.KindEvents: chat.StreamEvents, chat.KindDead: chat.StreamDead,
	} {
		if got := s.Stream(kind); got != want {
			t.Errorf("Stream(%s) = %q, constant is %q", kind, got, want)
		}
	}
	if got := s.Dead(chat.InvalidToken); got != "chat.dead._invalid" {
		t.Errorf("Dead(InvalidToken) = %q", got)
	}
	if !chat.ValidConversationID(chat.InvalidToken) {
		t.Errorf("InvalidToken %q must be a valid token so that chat.dead.* catches it", chat.InvalidToken)
	}
}

func TestConversationOf(t *testing.T) {
	s, err := chat.NewSubjects("chat")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ subject, want string }{
		{"chat.requests.c-42", "c-42"},
		{"chat.requests._invalid", "_invalid"},
		{"shadow.v2.requests.x", "x"},
		{"chat.requests.", ""},
		{"chat.requests.a b", "a b"}, // not validated: the caller checks
		{"nodots", "nodots"},
		{"", ""},
	}
	for _, tc := range cases {
		t.Run(tc.subject, func(t *testing.T) {
			if got := s.ConversationOf(tc.subject); got != tc.want {
				t.Errorf("ConversationOf(%q) = %q, want %q", tc.subject, got, tc.want)
			}
		})
	}
}
