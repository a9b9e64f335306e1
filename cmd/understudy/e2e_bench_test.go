package main

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/bench"
)

// TestBenchReportsEveryRequestAnswered runs `understudy bench` end to end
// (its own server and worker processes, small sizes) and checks the JSON
// report's shape and that every request was answered. It asserts no
// throughput: the machine decides those.
func TestBenchReportsEveryRequestAnswered(t *testing.T) {
	e2eNeedBinary(t)
	for _, sc := range []string{bench.ScenarioZero, bench.ScenarioFallback, bench.ScenarioBacklog, bench.ScenarioStream} {
		t.Run(sc, func(t *testing.T) {
			stdout, stderr, code, _ := e2eRun(t, 2*time.Minute, e2eEnv(), "bench", "--scenario", sc, "--requests", "300", "--json")
			if code != 0 {
				t.Fatalf("bench exited %d; stderr:\n%s", code, e2eTail(stderr, 4000))
			}
			var keys map[string]json.RawMessage
			if err := json.Unmarshal([]byte(stdout), &keys); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, e2eTail(stdout, 2000))
			}
			for _, k := range []string{"machine", "settings", "cpu_includes", "baseline", "results"} {
				if _, ok := keys[k]; !ok {
					t.Errorf("report has no %q", k)
				}
			}
			dec := json.NewDecoder(strings.NewReader(stdout))
			dec.DisallowUnknownFields()
			var rep bench.Report
			if err := dec.Decode(&rep); err != nil {
				t.Fatalf("report does not decode as bench.Report: %v", err)
			}
			if len(rep.Results) != 1 || rep.Results[0].Scenario != sc || rep.Results[0].Workers != 1 {
				t.Fatalf("results: %+v, want one %s row with 1 worker", rep.Results, sc)
			}
			for _, r := range []bench.Result{rep.Baseline, rep.Results[0]} {
				if r.Measured < 300 || r.Sent < r.Measured || r.Answered != r.Sent || r.Failed != 0 {
					t.Errorf("%s: measured %d, sent %d, answered %d, failed %d: want 300 measured at least and every request answered ok",
						r.Scenario, r.Measured, r.Sent, r.Answered, r.Failed)
				}
				if r.RPS <= 0 || r.RatioToBaseline <= 0 || r.Seconds <= 0 {
					t.Errorf("%s: req/s %v, ratio %v, seconds %v: want positive", r.Scenario, r.RPS, r.RatioToBaseline, r.Seconds)
				}
				if r.EndToEndMS.P50 <= 0 || r.EndToEndMS.P99 < r.EndToEndMS.P50 {
					t.Errorf("%s: end-to-end latency %+v", r.Scenario, r.EndToEndMS)
				}
				if r.StoredPerRequest < 2 {
					t.Errorf("%s: %v stored messages per request, want at least a request and a reply", r.Scenario, r.StoredPerRequest)
				}
				if runtime.GOOS == "linux" && (r.CPU.NATS == nil || r.CPU.Bench == nil || r.CPU.All == nil || r.PeakRSSMB.NATS == nil) {
					t.Errorf("%s: CPU %+v, RSS %+v: want the server's and the bench's measured", r.Scenario, r.CPU, r.PeakRSSMB)
				}
			}
			x := rep.Results[0]
			if runtime.GOOS == "linux" && (x.CPU.Worker == nil || x.PeakRSSMB.Worker == nil) {
				t.Errorf("worker CPU %v, RSS %v: want the worker process measured", x.CPU.Worker, x.PeakRSSMB.Worker)
			}
			if rep.Baseline.CPU.Worker != nil {
				t.Errorf("the baseline has no worker process, yet reports its CPU")
			}
			if sc == bench.ScenarioBacklog && len(x.RSSDrainMB) == 0 {
				t.Errorf("backlog: no RSS samples during the drain")
			}
			checkBenchStream(t, sc, x)
			checkBenchFloor(t, sc, rep)
			for _, k := range []string{"worker", "nats_server", "bench", "all"} {
				if rep.CPUIncludes[k] == "" {
					t.Errorf("cpu_includes[%q] is empty", k)
				}
			}
		})
	}
}

// checkBenchStream checks a result's streaming figures: present for the
// stream scenario only, each streamed answer's chunks heard (its words and
// the done; a reset would add one) and a first chunk timed. No throughput is asserted.
func checkBenchStream(t *testing.T, sc string, x bench.Result) {
	t.Helper()
	st := x.Stream
	if sc != bench.ScenarioStream {
		if st != nil {
			t.Errorf("%s: streaming figures %+v on a scenario that does not stream", sc, st)
		}
		return
	}
	if st == nil {
		t.Fatalf("stream: no streaming figures in the result")
	}
	// A request the worker answered whole (it could not read the earlier
	// chunks in time) streams nothing: only the shape is checked here.
	if st.Words < 1 || st.Requests != 300 || st.Streamed < 1 || st.Streamed > st.Requests || st.Chunks < st.Streamed*(st.Words+1) || st.ChunksPerRequest <= 0 {
		t.Errorf("stream: %d chunks (%v a request), %d of %d requests streamed, %d words: want each streamed request's words and done heard",
			st.Chunks, st.ChunksPerRequest, st.Streamed, x.Measured, st.Words)
	}
	if st.ChunksPerSecond <= 0 {
		t.Errorf("stream: %v chunks/s, want positive", st.ChunksPerSecond)
	}
	if runtime.GOOS == "linux" && (st.ChunksPerCoreSecond == nil || *st.ChunksPerCoreSecond <= 0) {
		t.Errorf("stream: chunks/s per core %v, want it measured", st.ChunksPerCoreSecond)
	}
	if st.FirstChunkMS.P50 <= 0 || st.FirstChunkMS.P99 < st.FirstChunkMS.P50 {
		t.Errorf("stream: first chunk %+v", st.FirstChunkMS)
	}
	if st.ProviderFirstChunkMS.P99 < st.ProviderFirstChunkMS.P50 || st.FirstChunkOverheadMS.P99 < st.FirstChunkOverheadMS.P50 {
		t.Errorf("stream: provider's first chunk %+v, overhead %+v", st.ProviderFirstChunkMS, st.FirstChunkOverheadMS)
	}
	if st.FirstChunkOverheadMS.P50 > st.FirstChunkMS.P50 {
		t.Errorf("stream: first-chunk overhead p50 %v above the first chunk's own p50 %v", st.FirstChunkOverheadMS.P50, st.FirstChunkMS.P50)
	}
}

// checkBenchFloor checks the floor measured beside zero, fallback and
// stream: every request answered ok through the claim, the provider and
// the reply (and fallback's failed call's event), its process measured as
// a worker's, its latencies at the scenario's rate, and the scenario's
// ratio to it. No throughput is asserted.
func checkBenchFloor(t *testing.T, sc string, rep bench.Report) {
	t.Helper()
	stored := map[string]float64{bench.ScenarioZero: 3, bench.ScenarioFallback: 4, bench.ScenarioStream: 3 + 20}
	want, ok := stored[sc]
	if !ok {
		if len(rep.Floors) != 0 {
			t.Errorf("%s: floors %+v, want none", sc, rep.Floors)
		}
		return
	}
	if len(rep.Floors) != 1 || rep.Floors[0].Scenario != "floor-"+sc {
		t.Fatalf("%s: floors %+v, want one floor-%s", sc, rep.Floors, sc)
	}
	f, x := rep.Floors[0], rep.Results[0]
	if f.Measured < 300 || f.Answered != f.Sent || f.Failed != 0 {
		t.Errorf("%s: measured %d, sent %d, answered %d, failed %d: want 300 measured at least and every request answered ok",
			f.Scenario, f.Measured, f.Sent, f.Answered, f.Failed)
	}
	if f.StoredPerRequest < want {
		t.Errorf("%s: %v stored messages per request (%v), want at least %v: request, claim, reply, and each failed call's event or chunk",
			f.Scenario, f.StoredPerRequest, f.StoredByStream, want)
	}
	if f.StoredByStream["claims"] != 1 {
		t.Errorf("%s: %v claim writes per request, want 1", f.Scenario, f.StoredByStream["claims"])
	}
	if f.LatencyRate != x.LatencyRate {
		t.Errorf("%s: latencies at %v req/s, the scenario's at %v: want the same rate", f.Scenario, f.LatencyRate, x.LatencyRate)
	}
	if f.RPS <= 0 || f.RatioToBaseline <= 0 || x.RatioToFloor <= 0 || f.OverheadMS.P99 < f.OverheadMS.P50 {
		t.Errorf("%s: req/s %v, ratio to raw %v, the scenario's ratio to it %v, overhead %+v",
			f.Scenario, f.RPS, f.RatioToBaseline, x.RatioToFloor, f.OverheadMS)
	}
	if runtime.GOOS == "linux" && (f.CPU.Worker == nil || f.CPU.Bench == nil || f.CPU.NATS == nil || f.PeakRSSMB.Worker == nil) {
		t.Errorf("%s: CPU %+v, RSS %+v: want the floor process's, the bench's and the server's", f.Scenario, f.CPU, f.PeakRSSMB)
	}
	checkBenchStream(t, sc, f)
}
