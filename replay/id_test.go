package replay

import (
	"strings"
	"testing"

	"github.com/understudy-ai/understudy/chat"
)

// requestID must read the same id as the worker's chat.DecodeRequest, or
// replies would not match their requests.
func TestRequestIDAgreesWithDecodeRequest(t *testing.T) {
	long := strings.Repeat("x", chat.MaxIDLen+1)
	tests := []struct {
		name, data string
	}{
		{"valid", `{"id":"r-1","messages":[{"role":"user","content":"hi"}]}`},
		{"no messages", `{"id":"r-2"}`},
		{"bad role", `{"id":"r-3","messages":[{"role":"tool","content":"hi"}]}`},
		{"messages not a list", `{"id":"r-4","messages":"hi"}`},
		{"trailing data", `{"id":"r-5","messages":[]} {"id":"r-6"}`},
		{"trailing garbage", `{"id":"r-7"} garbage`},
		{"id a number", `{"id":7,"messages":[]}`},
		{"id null", `{"id":null}`},
		{"no id", `{"messages":[{"role":"user","content":"hi"}]}`},
		{"id too long", `{"id":"` + long + `"}`},
		{"id too long, bad body", `{"id":"` + long + `","messages":1}`},
		{"upper-case key", `{"ID":"r-8","messages":[]}`},
		{"duplicate key", `{"id":"r-9","id":"r-10"}`},
		{"escaped id", `{"id":"r-\u0031\n"}`},
		{"invalid UTF-8", "{\"id\":\"r-11\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"},
		{"not JSON", `hello`},
		{"empty", ``},
		{"array", `[{"id":"r-12"}]`},
		{"truncated", `{"id":"r-13","messages":[{"role":"us`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, _ := chat.DecodeRequest([]byte(tt.data), "c-1", chat.DecodeLimits{})
			if got := chat.RequestID([]byte(tt.data)); got != want.ID {
				t.Errorf("requestID = %q, DecodeRequest reads %q", got, want.ID)
			}
		})
	}
}
