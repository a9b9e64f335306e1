package chat_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/understudy-ai/understudy/chat"
)

// FuzzDecodeRequest checks DecodeRequest's contract on arbitrary input:
//
//   - it never panics;
//   - on success the id is 1-128 characters, the conversation id is the subject
//     token and valid, and there is at least one message, each of a known role;
//   - on failure the error wraps ErrInvalid and an id, if returned, is at most
//     128 characters (it is echoed in the failed reply and in headers);
//   - decoding is deterministic.
//
// Its seed corpus is in testdata/fuzz/FuzzDecodeRequest; run it with
//
//	go test -run=^$ -fuzz=FuzzDecodeRequest -fuzztime=30s ./chat/
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(validBody), "c-42", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]}`), "c1", 262144)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"tool","content":"hi"}]}`), "c1", 0)
	f.Add([]byte(`{"id":"r1","conversation_id":"x","messages":[{"role":"user","content":"hi"}]}`), "y", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]} trailing`), "c1", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]}}`), "c1", 0)
	f.Add([]byte(`{"id":"`+strings.Repeat("x", 129)+`","messages":[{"role":"user","content":"hi"}]}`), "c1", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}],"max_tokens":-1,"temperature":3}`), "c1", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}],"deadline":"nope"}`), "c1", 0)
	f.Add([]byte("{\"id\":\"r1\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"), "c1", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]}`), "a.b", 0)
	f.Add([]byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]}`), ">", 0)
	f.Add([]byte(`{"id":"big","messages":[{"role":"user","content":"0123456789"}]}`), "c1", 16)
	f.Add([]byte(`null`), "c1", 0)
	f.Add([]byte(``), "", -1)

	f.Fuzz(func(t *testing.T, data []byte, conv string, maxBytes int) {
		lim := chat.DecodeLimits{MaxBytes: maxBytes}
		orig := bytes.Clone(data)
		r, err := chat.DecodeRequest(data, conv, lim)
		if !bytes.Equal(data, orig) {
			t.Fatalf("DecodeRequest modified its input")
		}

		// Deterministic: the same input gives the same result and error.
		r2, err2 := chat.DecodeRequest(data, conv, lim)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("not deterministic: %v, then %v", err, err2)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("not deterministic: %+v, then %+v", r, r2)
		}

		if err != nil {
			if !errors.Is(err, chat.ErrInvalid) {
				t.Fatalf("error %q does not wrap ErrInvalid", err)
			}
			if n := utf8.RuneCountInString(r.ID); n > chat.MaxIDLen {
				t.Fatalf("failed decode returned an id of %d characters (over %d): %v", n, chat.MaxIDLen, err)
			}
			return
		}

		// Success.
		if n := utf8.RuneCountInString(r.ID); n == 0 || n > chat.MaxIDLen {
			t.Fatalf("accepted an id of %d characters", n)
		}
		if r.ConversationID != conv {
			t.Fatalf("ConversationID = %q, want the subject token %q", r.ConversationID, conv)
		}
		if !chat.ValidConversationID(r.ConversationID) {
			t.Fatalf("accepted an invalid conversation id %q", r.ConversationID)
		}
		if len(r.Messages) == 0 {
			t.Fatalf("accepted a request without messages")
		}
		for i, m := range r.Messages {
			switch m.Role {
			case chat.RoleSystem, chat.RoleUser, chat.RoleAssistant:
			default:
				t.Fatalf("accepted messages[%d].role %q", i, m.Role)
			}
		}
		if r.MaxTokens < 0 {
			t.Fatalf("accepted max_tokens %d", r.MaxTokens)
		}
		if r.Temperature != nil && (*r.Temperature < 0 || *r.Temperature > 2) {
			t.Fatalf("accepted temperature %v", *r.Temperature)
		}
		if maxBytes > 0 && len(data) > maxBytes {
			t.Fatalf("accepted %d bytes over a limit of %d", len(data), maxBytes)
		}
		// Whatever was accepted is a single JSON value: nothing but
		// whitespace may follow it.
		if !json.Valid(data) {
			if c, ok := byteAfterFirstValue(data); ok && (c == '}' || c == ']') {
				t.Fatalf("payload with %q after its object accepted: chat/decode.go:42 json.Decoder.More() is false when the next byte is '}' or ']', so anything from there on is ignored", data[len(data)-min(len(data), 16):])
			}
			t.Fatalf("accepted a payload that is not one JSON value: %q", data)
		}
	})
}

// byteAfterFirstValue returns the first non-space byte after the first JSON
// value of data.
func byteAfterFirstValue(data []byte) (byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v json.RawMessage
	if dec.Decode(&v) != nil {
		return 0, false
	}
	rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")
	if len(rest) == 0 {
		return 0, false
	}
	return rest[0], true
}

// TestFuzzSeedCorpus keeps the checked-in seeds meaningful: files named
// valid_* must decode, files named invalid_* must be refused. (Files the
// fuzzer adds itself, named by hash, are only run by FuzzDecodeRequest.)
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeRequest")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		wantOK := strings.HasPrefix(name, "valid_")
		if !wantOK && !strings.HasPrefix(name, "invalid_") {
			continue
		}
		n++
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			data, conv, maxBytes := parseSeed(t, raw)
			_, err = chat.DecodeRequest(data, conv, chat.DecodeLimits{MaxBytes: maxBytes})
			if wantOK && err != nil {
				t.Errorf("valid seed refused: %v", err)
			}
			if !wantOK && err == nil {
				if strings.Contains(name, "trailing_brace") {
					t.Fatalf("seed %s accepted: chat/decode.go:42 json.Decoder.More() ignores a trailing '}'", name)
				}
				t.Errorf("invalid seed accepted")
			}
		})
	}
	if n < 10 {
		t.Errorf("only %d named seeds in %s", n, dir)
	}
}

// parseSeed reads a "go test fuzz v1" file of ([]byte, string, int).
func parseSeed(t *testing.T, raw []byte) ([]byte, string, int) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "go test fuzz v1" {
		t.Fatalf("not a go test fuzz v1 file of three values: %d lines", len(lines))
	}
	arg := func(line, typ string) string {
		if !strings.HasPrefix(line, typ+"(") || !strings.HasSuffix(line, ")") {
			t.Fatalf("line %q is not a %s", line, typ)
		}
		return line[len(typ)+1 : len(line)-1]
	}
	data, err := strconv.Unquote(arg(lines[1], "[]byte"))
	if err != nil {
		t.Fatalf("[]byte: %v", err)
	}
	conv, err := strconv.Unquote(arg(lines[2], "string"))
	if err != nil {
		t.Fatalf("string: %v", err)
	}
	maxBytes, err := strconv.Atoi(arg(lines[3], "int"))
	if err != nil {
		t.Fatalf("int: %v", err)
	}
	return []byte(data), conv, maxBytes
}
