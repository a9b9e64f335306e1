package chat_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// validBody is the request of SPEC §3.
const validBody = `{"id": "req-01", "conversation_id": "c-42",
 "messages": [{"role": "system", "content": "You are Lucy."}, {"role": "user", "content": "hi"}],
 "max_tokens": 512, "temperature": 0.7,
 "deadline": "2026-01-20T12:00:30Z", "metadata": {"user": "u-7"}}`

// body builds a request around the given extra members, messages always
// one valid user turn unless extra overrides it.
func body(members string) string {
	if !strings.Contains(members, `"messages"`) {
		if members != "" {
			members += ","
		}
		members += `"messages":[{"role":"user","content":"hi"}]`
	}
	return "{" + members + "}"
}

func TestDecodeRequestValid(t *testing.T) {
	wantDeadline := time.Date(2026, 1, 20, 12, 0, 30, 0, time.UTC)
	cases := []struct {
		name     string
		data     string
		conv     string
		lim      chat.DecodeLimits
		check    func(t *testing.T, r chat.Request)
		wantID   string
		wantMsgs int
	}{
		{
			name: "spec example, conversation_id equal to the subject token", data: validBody, conv: "c-42",
			wantID: "req-01", wantMsgs: 2,
			check: func(t *testing.T, r chat.Request) {
				if r.MaxTokens != 512 {
					t.Errorf("MaxTokens = %d, want 512", r.MaxTokens)
				}
				if r.Temperature == nil || *r.Temperature != 0.7 {
					t.Errorf("Temperature = %v, want 0.7", r.Temperature)
				}
				if !r.Deadline.Equal(wantDeadline) {
					t.Errorf("Deadline = %v, want %v", r.Deadline, wantDeadline)
				}
				if string(r.Metadata) != `{"user": "u-7"}` {
					t.Errorf("Metadata = %s, want the raw bytes {\"user\": \"u-7\"}", r.Metadata)
				}
				if r.Messages[0].Role != chat.RoleSystem || r.Messages[0].Content != "You are Lucy." ||
					r.Messages[1].Role != chat.RoleUser || r.Messages[1].Content != "hi" {
					t.Errorf("Messages = %+v", r.Messages)
				}
			},
		},
		{
			name: "conversation_id omitted is taken from the subject", data: body(`"id":"r1"`), conv: "from-subject_7",
			wantID: "r1", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if r.MaxTokens != 0 || r.Temperature != nil || !r.Deadline.IsZero() || r.Metadata != nil {
					t.Errorf("optional fields not left zero: %+v", r)
				}
			},
		},
		{
			name: "conversation_id empty string is treated as omitted", data: body(`"id":"r1","conversation_id":""`), conv: "c1",
			wantID: "r1", wantMsgs: 1,
		},
		{
			name: "all three roles", conv: "c1", wantID: "r1", wantMsgs: 3,
			data: body(`"id":"r1","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}]`),
		},
		{
			name: "id of exactly 128 bytes", data: body(`"id":"` + strings.Repeat("i", 128) + `"`), conv: "c1",
			wantID: strings.Repeat("i", 128), wantMsgs: 1,
		},
		{
			name: "id of one byte", data: body(`"id":"x"`), conv: "c1", wantID: "x", wantMsgs: 1,
		},
		{
			name: "subject token of exactly 128 characters", data: body(`"id":"r1"`), conv: strings.Repeat("c", 128),
			wantID: "r1", wantMsgs: 1,
		},
		{
			name: "unicode content and id", data: body(`"id":"réq-ü","messages":[{"role":"user","content":"こんにちは 👋"}]`), conv: "c1",
			wantID: "réq-ü", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if r.Messages[0].Content != "こんにちは 👋" {
					t.Errorf("Content = %q", r.Messages[0].Content)
				}
			},
		},
		{
			name: "max_tokens zero and temperature bounds 0", data: body(`"id":"r1","max_tokens":0,"temperature":0`), conv: "c1",
			wantID: "r1", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if r.Temperature == nil || *r.Temperature != 0 {
					t.Errorf("Temperature = %v, want 0 (set, not nil)", r.Temperature)
				}
			},
		},
		{
			name: "temperature upper bound 2", data: body(`"id":"r1","temperature":2`), conv: "c1", wantID: "r1", wantMsgs: 1,
		},
		{
			name: "deadline with a zone offset", data: body(`"id":"r1","deadline":"2026-01-20T14:00:30.5+02:00"`), conv: "c1",
			wantID: "r1", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if want := wantDeadline.Add(500 * time.Millisecond); !r.Deadline.Equal(want) {
					t.Errorf("Deadline = %v, want %v", r.Deadline, want)
				}
			},
		},
		{
			name: "deadline null is no deadline", data: body(`"id":"r1","deadline":null`), conv: "c1", wantID: "r1", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if !r.Deadline.IsZero() {
					t.Errorf("Deadline = %v, want zero", r.Deadline)
				}
			},
		},
		{
			name: "nested metadata echoed byte for byte", conv: "c1", wantID: "r1", wantMsgs: 1,
			data: body(`"id":"r1","metadata":{"user":"u-7","tags":["a",1,null,{"deep":{"x":true}}],  "n": 1.50e3}`),
			check: func(t *testing.T, r chat.Request) {
				want := `{"user":"u-7","tags":["a",1,null,{"deep":{"x":true}}],  "n": 1.50e3}`
				if string(r.Metadata) != want {
					t.Errorf("Metadata = %s, want %s", r.Metadata, want)
				}
			},
		},
		{
			name: "metadata as a scalar is echoed too", data: body(`"id":"r1","metadata":"just a string"`), conv: "c1",
			wantID: "r1", wantMsgs: 1,
			check: func(t *testing.T, r chat.Request) {
				if string(r.Metadata) != `"just a string"` {
					t.Errorf("Metadata = %s", r.Metadata)
				}
			},
		},
		{
			name: "unknown fields are ignored", data: body(`"id":"r1","stream":true,"tools":[]`), conv: "c1", wantID: "r1", wantMsgs: 1,
		},
		{
			name: "surrounding whitespace is allowed", data: "\n\t " + body(`"id":"r1"`) + " \r\n", conv: "c1", wantID: "r1", wantMsgs: 1,
		},
		{
			name: "payload exactly MaxBytes is accepted", data: body(`"id":"r1"`), conv: "c1",
			lim: chat.DecodeLimits{MaxBytes: len(body(`"id":"r1"`))}, wantID: "r1", wantMsgs: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := chat.DecodeRequest([]byte(tc.data), tc.conv, tc.lim)
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if r.ID != tc.wantID {
				t.Errorf("ID = %q, want %q", r.ID, tc.wantID)
			}
			if r.ConversationID != tc.conv {
				t.Errorf("ConversationID = %q, want the subject's %q", r.ConversationID, tc.conv)
			}
			if len(r.Messages) != tc.wantMsgs {
				t.Errorf("len(Messages) = %d, want %d", len(r.Messages), tc.wantMsgs)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func TestDecodeRequestInvalid(t *testing.T) {
	longID := strings.Repeat("x", 129)
	big := body(`"id":"big-1","messages":[{"role":"user","content":"` + strings.Repeat("a", 1000) + `"}]`)
	cases := []struct {
		name string
		data string
		conv string
		lim  chat.DecodeLimits
		// wantID is the id the result must carry (so that the failed reply
		// can echo it); "" when it must not be echoed.
		wantID string
		// wantMsg is a piece of the error's text.
		wantMsg string
		// bug, when set, describes a reported production bug this case hits.
		bug string
	}{
		{name: "unparsable JSON", data: `{"id":"r1","messages":[`, conv: "c1", wantMsg: "not a JSON request"},
		{name: "not JSON at all", data: `hello`, conv: "c1", wantMsg: "not a JSON request"},
		{name: "empty payload", data: ``, conv: "c1", wantMsg: "not a JSON request"},
		{name: "JSON array", data: `[1,2]`, conv: "c1", wantMsg: "not a JSON request"},
		{name: "JSON string", data: `"r1"`, conv: "c1", wantMsg: "not a JSON request"},
		{name: "JSON null", data: `null`, conv: "c1", wantMsg: "id is missing"},
		{name: "empty object", data: `{}`, conv: "c1", wantMsg: "id is missing"},
		{name: "trailing garbage", data: body(`"id":"r1"`) + ` xyz`, conv: "c1", wantID: "r1", wantMsg: "trailing data"},
		{name: "two objects", data: body(`"id":"r1"`) + body(`"id":"r2"`), conv: "c1", wantID: "r1", wantMsg: "trailing data"},
		{name: "trailing comma-separated value", data: body(`"id":"r1"`) + `,1`, conv: "c1", wantID: "r1", wantMsg: "trailing data"},
		{
			name: "trailing closing brace", data: body(`"id":"r1"`) + `}`, conv: "c1", wantID: "r1", wantMsg: "trailing data",
			bug: "chat/decode.go:42 uses json.Decoder.More(), which returns false when the next non-space byte is '}' or ']', so a payload followed by '}' or ']' and then anything at all is accepted as valid",
		},
		{
			name: "trailing closing bracket", data: body(`"id":"r1"`) + `]]`, conv: "c1", wantID: "r1", wantMsg: "trailing data",
			bug: "chat/decode.go:42 uses json.Decoder.More(), which returns false when the next non-space byte is '}' or ']', so a payload followed by '}' or ']' and then anything at all is accepted as valid",
		},
		{
			name: "closing bracket then arbitrary garbage", data: body(`"id":"r1"`) + `] {"id":"evil"} not json at all`, conv: "c1", wantID: "r1", wantMsg: "trailing data",
			bug: "chat/decode.go:42 uses json.Decoder.More(), which returns false when the next non-space byte is '}' or ']', so a payload followed by '}' or ']' and then anything at all is accepted as valid",
		},
		{name: "non-UTF-8 payload", data: "{\"id\":\"r1\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", conv: "c1", wantMsg: "UTF-8"},
		{name: "missing id", data: body(``), conv: "c1", wantMsg: "id is missing"},
		{name: "empty id", data: body(`"id":""`), conv: "c1", wantMsg: "id is missing"},
		{name: "id not a string", data: body(`"id":42`), conv: "c1", wantMsg: "not a JSON request"},
		{name: "id with leading space", data: body(`"id":" r1"`), conv: "c1", wantMsg: "white space"},
		{name: "id with trailing space", data: body(`"id":"r1 "`), conv: "c1", wantMsg: "white space"},
		{name: "id with a line break", data: body(`"id":"a\nb"`), conv: "c1", wantMsg: "control characters"},
		{name: "id with a tab", data: body(`"id":"a\tb"`), conv: "c1", wantMsg: "control characters"},
		{name: "id of 129 bytes is not echoed", data: body(`"id":"` + longID + `"`), conv: "c1", wantMsg: "129 characters"},
		{name: "id of 129 bytes is not echoed even when the JSON is broken", data: `{"id":"` + longID + `","messages":`, conv: "c1", wantMsg: "not a JSON request"},
		{
			name: "id of 129 bytes is not echoed even with trailing data", data: body(`"id":"`+longID+`"`) + ` x`, conv: "c1",
			wantMsg: "129 characters",
		},
		{
			name: "id of 129 bytes is not echoed even on a bad subject token", data: body(`"id":"` + longID + `"`), conv: "a.b",
			wantMsg: "129 characters",
		},
		{name: "id of 129 two-byte characters is over the limit", data: body(`"id":"` + strings.Repeat("é", 129) + `"`), conv: "c1", wantMsg: "129 characters"},
		{name: "messages missing", data: `{"id":"r1"}`, conv: "c1", wantID: "r1", wantMsg: "messages is empty"},
		{name: "messages empty", data: `{"id":"r1","messages":[]}`, conv: "c1", wantID: "r1", wantMsg: "messages is empty"},
		{name: "messages null", data: `{"id":"r1","messages":null}`, conv: "c1", wantID: "r1", wantMsg: "messages is empty"},
		{name: "messages not an array", data: `{"id":"r1","messages":{"role":"user","content":"hi"}}`, conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "messages a string", data: `{"id":"r1","messages":"hi"}`, conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "message not an object", data: `{"id":"r1","messages":["hi"]}`, conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "role tool", data: body(`"id":"r1","messages":[{"role":"tool","content":"x"}]`), conv: "c1", wantID: "r1", wantMsg: `messages[0].role "tool"`},
		{name: "role empty", data: body(`"id":"r1","messages":[{"role":"","content":"x"}]`), conv: "c1", wantID: "r1", wantMsg: `messages[0].role ""`},
		{name: "role missing", data: body(`"id":"r1","messages":[{"content":"x"}]`), conv: "c1", wantID: "r1", wantMsg: `messages[0].role ""`},
		{name: "role in capitals", data: body(`"id":"r1","messages":[{"role":"User","content":"x"}]`), conv: "c1", wantID: "r1", wantMsg: `"User"`},
		{name: "bad role after good ones", data: body(`"id":"r1","messages":[{"role":"user","content":"x"},{"role":"function","content":"y"}]`), conv: "c1", wantID: "r1", wantMsg: "messages[1].role"},
		{name: "role not a string", data: body(`"id":"r1","messages":[{"role":1,"content":"x"}]`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "conversation_id differs from the subject token", data: body(`"id":"r1","conversation_id":"other"`), conv: "c1", wantID: "r1", wantMsg: `"other" differs from the subject's "c1"`},
		{name: "conversation_id differs only in case", data: body(`"id":"r1","conversation_id":"C1"`), conv: "c1", wantID: "r1", wantMsg: "differs"},
		{name: "subject token with a dot", data: body(`"id":"r1"`), conv: "a.b", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token *", data: body(`"id":"r1"`), conv: "*", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token >", data: body(`"id":"r1"`), conv: ">", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token with a space", data: body(`"id":"r1"`), conv: "a b", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token of 129 characters", data: body(`"id":"r1"`), conv: strings.Repeat("c", 129), wantID: "r1", wantMsg: "subject token"},
		{name: "subject token empty", data: body(`"id":"r1"`), conv: "", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token non-ASCII", data: body(`"id":"r1"`), conv: "café", wantID: "r1", wantMsg: "subject token"},
		{name: "subject token _invalid is valid but a mismatched conversation_id is not", data: body(`"id":"r1","conversation_id":"a.b"`), conv: "_invalid", wantID: "r1", wantMsg: "differs"},
		{name: "payload over MaxBytes, id still returned", data: big, conv: "c1", lim: chat.DecodeLimits{MaxBytes: 256}, wantID: "big-1", wantMsg: "over the limit of 256"},
		{name: "payload one byte over MaxBytes", data: body(`"id":"r1"`), conv: "c1", lim: chat.DecodeLimits{MaxBytes: len(body(`"id":"r1"`)) - 1}, wantID: "r1", wantMsg: "worker.max_request_bytes"},
		{name: "payload over MaxBytes and broken", data: strings.Repeat("{", 300), conv: "c1", lim: chat.DecodeLimits{MaxBytes: 256}, wantMsg: "over the limit"},
		{name: "payload over MaxBytes with a long id", data: `{"id":"` + longID + `","pad":"` + strings.Repeat("p", 300) + `"}`, conv: "c1", lim: chat.DecodeLimits{MaxBytes: 256}, wantMsg: "over the limit"},
		{name: "payload over MaxBytes checked before the subject token", data: big, conv: "a.b", lim: chat.DecodeLimits{MaxBytes: 256}, wantID: "big-1", wantMsg: "over the limit"},
		{name: "negative max_tokens", data: body(`"id":"r1","max_tokens":-1`), conv: "c1", wantID: "r1", wantMsg: "max_tokens"},
		{name: "fractional max_tokens", data: body(`"id":"r1","max_tokens":1.5`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "max_tokens over int range", data: body(`"id":"r1","max_tokens":1e30`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "temperature below 0", data: body(`"id":"r1","temperature":-0.01`), conv: "c1", wantID: "r1", wantMsg: "temperature"},
		{name: "temperature above 2", data: body(`"id":"r1","temperature":2.01`), conv: "c1", wantID: "r1", wantMsg: "outside [0, 2]"},
		{name: "temperature as a string", data: body(`"id":"r1","temperature":"0.7"`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "deadline not RFC 3339", data: body(`"id":"r1","deadline":"tomorrow"`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "deadline a date only", data: body(`"id":"r1","deadline":"2026-01-20"`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "deadline without a zone", data: body(`"id":"r1","deadline":"2026-01-20T12:00:30"`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "deadline as a Unix number", data: body(`"id":"r1","deadline":1768910430`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
		{name: "deadline empty string", data: body(`"id":"r1","deadline":""`), conv: "c1", wantID: "r1", wantMsg: "not a JSON request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := chat.DecodeRequest([]byte(tc.data), tc.conv, tc.lim)
			if err == nil {
				if tc.bug != "" {
					t.Fatalf("%s", tc.bug)
				}
				t.Fatalf("DecodeRequest accepted %q on subject token %q: %+v", tc.data, tc.conv, r)
			}
			if !errors.Is(err, chat.ErrInvalid) {
				t.Errorf("error %q does not wrap chat.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			if r.ID != tc.wantID {
				if tc.bug != "" {
					t.Fatalf("%s (ID is %d bytes)", tc.bug, len(r.ID))
				}
				t.Errorf("ID = %q, want %q", r.ID, tc.wantID)
			}
			if len(r.ID) > chat.MaxIDLen {
				t.Errorf("ID of %d bytes returned: an id over %d bytes must never be echoed", len(r.ID), chat.MaxIDLen)
			}
		})
	}
}

// TestDecodeRequestConversationMismatch pins what the worker relies on when
// the ids disagree: the error names both, and the subject's token (the
// caller's, not the body's) is what a reply is addressed with.
func TestDecodeRequestConversationMismatch(t *testing.T) {
	_, err := chat.DecodeRequest([]byte(body(`"id":"r1","conversation_id":"body-conv"`)), "subject-conv", chat.DecodeLimits{})
	if !errors.Is(err, chat.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, s := range []string{"body-conv", "subject-conv"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	// The same body on its own subject is fine and keeps that subject's id.
	r, err := chat.DecodeRequest([]byte(body(`"id":"r1","conversation_id":"body-conv"`)), "body-conv", chat.DecodeLimits{})
	if err != nil || r.ConversationID != "body-conv" {
		t.Fatalf("matching ids: r = %+v, err = %v", r, err)
	}
}

// TestDecodeRequestMetadataRoundTrip checks that metadata decoded from a
// request is echoed unchanged when the reply is encoded.
func TestDecodeRequestMetadataRoundTrip(t *testing.T) {
	meta := `{"user":"u-7","nested":{"list":[1,2,{"k":"v"}],"unicode":"ü👋","esc":"a\"b\\c\u0001"}}`
	r, err := chat.DecodeRequest([]byte(body(`"id":"r1","metadata":`+meta)), "c1", chat.DecodeLimits{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(chat.Reply{ID: r.ID, ConversationID: r.ConversationID, Status: chat.StatusOK, Metadata: r.Metadata})
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if string(back.Metadata) != meta {
		t.Errorf("reply metadata = %s, want %s", back.Metadata, meta)
	}
	// The decoded metadata must not alias the input buffer.
	data := []byte(body(`"id":"r1","metadata":{"a":"b"}`))
	r, err = chat.DecodeRequest(data, "c1", chat.DecodeLimits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		data[i] = ' '
	}
	if string(r.Metadata) != `{"a":"b"}` {
		t.Errorf("metadata changed with the input buffer: %q", r.Metadata)
	}
}

// TestDecodeRequestNoLimit checks that MaxBytes 0 means no limit.
func TestDecodeRequestNoLimit(t *testing.T) {
	content := strings.Repeat("a", 1<<20)
	r, err := chat.DecodeRequest([]byte(body(`"id":"r1","messages":[{"role":"user","content":"`+content+`"}]`)), "c1", chat.DecodeLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Messages[0].Content) != len(content) {
		t.Errorf("content is %d bytes, want %d", len(r.Messages[0].Content), len(content))
	}
}

func TestEffectiveDeadline(t *testing.T) {
	published := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	explicit := time.Date(2026, 1, 20, 12, 0, 30, 0, time.UTC)
	cases := []struct {
		name     string
		deadline time.Time
		ttl      time.Duration
		want     time.Time
	}{
		{"no deadline: publish time + ttl", time.Time{}, 2 * time.Minute, published.Add(2 * time.Minute)},
		{"no deadline, zero ttl", time.Time{}, 0, published},
		{"explicit deadline wins over the ttl", explicit, 2 * time.Minute, explicit},
		{"explicit deadline later than publish+ttl is kept", published.Add(time.Hour), 2 * time.Minute, published.Add(time.Hour)},
		{"explicit deadline in the past is kept", published.Add(-time.Minute), 2 * time.Minute, published.Add(-time.Minute)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := chat.Request{Deadline: tc.deadline}
			if got := r.EffectiveDeadline(published, tc.ttl); !got.Equal(tc.want) {
				t.Errorf("EffectiveDeadline = %v, want %v", got, tc.want)
			}
		})
	}
	// A decoded request without a deadline gets publish time + ttl.
	r, err := chat.DecodeRequest([]byte(body(`"id":"r1"`)), "c1", chat.DecodeLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.EffectiveDeadline(published, time.Minute); !got.Equal(published.Add(time.Minute)) {
		t.Errorf("decoded request without deadline: %v", got)
	}
}
