package bench

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseWorkers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{{"1", []int{1}}, {"3", []int{3}}, {"1..3", []int{1, 2, 3}}, {"2..2", []int{2}},
		{"0", nil}, {"3..1", nil}, {"a", nil}, {"1..", nil}, {"", nil}} {
		got, err := ParseWorkers(tc.in)
		if tc.want == nil {
			if !errors.Is(err, ErrInvalidOption) {
				t.Errorf("ParseWorkers(%q) = %v, %v; want ErrInvalidOption", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseWorkers(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseScenarios(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{{"all", Scenarios}, {"", Scenarios}, {"backlog,zero", []string{"zero", "backlog"}}, {"open", []string{"open"}},
		{"zero,nope", nil}} {
		got, err := ParseScenarios(tc.in)
		if tc.want == nil {
			if !errors.Is(err, ErrInvalidOption) {
				t.Errorf("ParseScenarios(%q) = %v, %v; want ErrInvalidOption", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseScenarios(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestWorkerConfigIsValid(t *testing.T) {
	// The generated configuration must be one `serve` accepts: checked
	// end to end by cmd/understudy's TestBenchReportsEveryRequestAnswered;
	// here, that the chain is written in order.
	c := workerConfig{natsURL: "nats://127.0.0.1:4222", prefix: "ub-x-zero-1", concurrency: 64, failuresToOpen: 1,
		metricsPort: 9999, chain: []chainLink{{"primary", "http://a/v1"}, {"answer", "http://b/v1"}}}
	y := c.yaml()
	if i, j := indexOf(y, "name: primary"), indexOf(y, "name: answer"); i < 0 || j < i {
		t.Errorf("chain out of order in:\n%s", y)
	}
}

func indexOf(s, sub string) int { return strings.Index(s, sub) }

func TestValidateRate(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		ok   bool
	}{{0, true}, {50, true}, {0.5, true}, {-1, false}} {
		o := Options{Binary: "understudy", Rate: tc.rate}
		o.setDefaults()
		if err := o.Validate(); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidOption)) {
			t.Errorf("Validate with Rate %g = %v, want ok %v", tc.rate, err, tc.ok)
		}
	}
}
