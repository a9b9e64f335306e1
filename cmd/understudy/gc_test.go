package main

import (
	"runtime/debug"
	"testing"
)

func TestServeGOGCUnlessTheEnvironmentSetsIt(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		applied bool
		want    int
	}{
		{"unset", map[string]string{}, true, serveGOGC},
		{"set", map[string]string{"GOGC": "100"}, false, 77},
		{"set to off", map[string]string{"GOGC": "off"}, false, 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := debug.SetGCPercent(77) // what the runtime took from GOGC
			defer debug.SetGCPercent(prev)
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			if got := applyServeGOGC(lookup); got != tc.applied {
				t.Errorf("applied = %v, want %v", got, tc.applied)
			}
			if got := debug.SetGCPercent(77); got != tc.want {
				t.Errorf("GC percent %d, want %d", got, tc.want)
			}
		})
	}
}
