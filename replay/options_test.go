package replay_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/replay"
)

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "2026-01-20T11:00:00Z", want: time.Date(2026, 1, 20, 11, 0, 0, 0, time.UTC)},
		{in: "2026-01-20T13:00:00+02:00", want: time.Date(2026, 1, 20, 11, 0, 0, 0, time.UTC)},
		{in: "2026-01-20T11:00:00.250Z", want: time.Date(2026, 1, 20, 11, 0, 0, 250e6, time.UTC)},
		{in: " 15m ", want: now.Add(-15 * time.Minute)},
		{in: "2h", want: now.Add(-2 * time.Hour)},
		{in: "1h30m", want: now.Add(-90 * time.Minute)},
		{in: "90s", want: now.Add(-90 * time.Second)},
		{in: "7d", want: now.Add(-7 * 24 * time.Hour)},
		{in: "1d12h", want: now.Add(-36 * time.Hour)},
		{in: "0s", want: now},
		{in: "now", want: now},
		{in: "", wantErr: "empty time"},
		{in: "yesterday", wantErr: `"yesterday" is neither an RFC 3339 time`},
		{in: "-5m", wantErr: "neither"},
		{in: "15", wantErr: "neither"},
		{in: "d", wantErr: "neither"},
		{in: "1.5d", wantErr: "neither"},
		{in: "2026-01-20 11:00", wantErr: "neither"},
		{in: "2026-01-20", wantErr: "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := replay.ParseWhen(tt.in, now)
			if tt.wantErr != "" {
				if !errors.Is(err, replay.ErrInvalidOption) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseWhen(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("ParseWhen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	now := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		opt     replay.Options
		wantErr string
	}{
		{"zero: everything until now", replay.Options{}, ""},
		{"since only", replay.Options{Since: now.Add(-time.Hour)}, ""},
		{"window with a conversation", replay.Options{Since: now.Add(-time.Hour), Until: now.Add(-time.Minute), Conversation: "c_42-x"}, ""},
		{"until only, in the past", replay.Options{Until: now.Add(-time.Hour)}, ""},
		{"since after until", replay.Options{Since: now.Add(-time.Minute), Until: now.Add(-time.Hour)}, "since (2026-01-20T11:59:00Z) must be before until (2026-01-20T11:00:00Z)"},
		{"since after now", replay.Options{Since: now.Add(time.Minute)}, "must be before until"},
		{"conversation with a dot", replay.Options{Conversation: "a.b"}, `conversation "a.b" is not a conversation id`},
		{"conversation with a space", replay.Options{Conversation: "a b"}, "not a conversation id"},
		{"conversation wildcard", replay.Options{Conversation: ">"}, "not a conversation id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opt.Validate(now)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, replay.ErrInvalidOption) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate: %v; want ErrInvalidOption with %q", err, tt.wantErr)
			}
		})
	}
}
