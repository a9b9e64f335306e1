package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/bench"
)

// TestBenchOrderedReportsFourCases runs `understudy bench --scenario
// ordered` small, end to end, and checks the report has its four figures
// (ordering none and conversation, across 1,000 conversations and 10), each
// with its ratio to ordering none, and that every request was answered. It
// asserts no throughput.
func TestBenchOrderedReportsFourCases(t *testing.T) {
	e2eNeedBinary(t)
	stdout, stderr, code, _ := e2eRun(t, 2*time.Minute, e2eEnv(), "bench", "--scenario", bench.ScenarioOrdered, "--requests", "200", "--json")
	if code != 0 {
		t.Fatalf("bench exited %d; stderr:\n%s", code, e2eTail(stderr, 4000))
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var rep bench.Report
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("report does not decode as bench.Report: %v\n%s", err, e2eTail(stdout, 2000))
	}
	if rep.Settings.Ordered != 200 {
		t.Errorf("settings: %d ordered requests a case, want 200 (--requests)", rep.Settings.Ordered)
	}
	type key struct {
		ordering string
		convs    int
	}
	// 200 requests across "1,000" conversations is 200 conversations of one.
	want := []key{{"none", 200}, {"conversation", 200}, {"none", 10}, {"conversation", 10}}
	if len(rep.Results) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(rep.Results), len(want), rep.Results)
	}
	for i, x := range rep.Results {
		if got := (key{x.Ordering, x.Conversations}); x.Scenario != bench.ScenarioOrdered || got != want[i] || x.Workers != 1 {
			t.Errorf("result %d: %s %+v with %d workers, want ordered %+v with 1", i, x.Scenario, got, x.Workers, want[i])
		}
		if x.Measured != 200 || x.Answered != x.Sent || x.Sent < x.Measured || x.Failed != 0 {
			t.Errorf("%s/%d: measured %d, sent %d, answered %d, failed %d: want 200 measured and every request answered ok",
				x.Ordering, x.Conversations, x.Measured, x.Sent, x.Answered, x.Failed)
		}
		if x.RPS <= 0 || x.RatioToUnordered <= 0 || x.RatioToBaseline <= 0 {
			t.Errorf("%s/%d: req/s %v, ratio to unordered %v, to raw %v: want positive", x.Ordering, x.Conversations, x.RPS, x.RatioToUnordered, x.RatioToBaseline)
		}
		if x.Ordering == "none" && x.RatioToUnordered != 1 {
			t.Errorf("none/%d: ratio to unordered %v, want 1", x.Conversations, x.RatioToUnordered)
		}
		if x.Ordering == "conversation" && x.StoredByStream["order"] <= 0 {
			t.Errorf("conversation/%d: stored by stream %v: want the order bucket written", x.Conversations, x.StoredByStream)
		}
	}
}
