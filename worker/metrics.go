package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/understudy-ai/understudy/breaker"
)

// Request results counted by understudy_requests_total.
const (
	resultOK        = "ok"
	resultFailed    = "failed"
	resultRequeued  = "requeued"
	resultInvalid   = "invalid"
	resultDuplicate = "duplicate"
	resultBusy      = "busy"
)

// Metrics are the Prometheus collectors of a worker process.
type Metrics struct {
	requests       *prometheus.CounterVec
	attempts       *prometheus.CounterVec
	attemptSeconds *prometheus.HistogramVec
	requestSeconds prometheus.Histogram
	queueWait      prometheus.Histogram
	breakerState   *prometheus.GaugeVec
	inFlight       prometheus.Gauge
	backlogPending prometheus.Gauge
	backlogAck     prometheus.Gauge
	// backlogServable is the backlog more workers could serve now.
	backlogServable prometheus.Gauge
	degraded        prometheus.Counter
	deadLetters     *prometheus.CounterVec
	breakerChanges  *prometheus.CounterVec
	firstChunk      *prometheus.HistogramVec
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered anywhere, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	latency := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_requests_total",
			Help: "Deliveries handled, by result: ok, failed, requeued, invalid, duplicate (already answered), busy (same id in flight elsewhere)."}, []string{"result"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_attempts_total",
			Help: "Provider attempts by provider and outcome."}, []string{"provider", "outcome"}),
		attemptSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "understudy_attempt_duration_seconds",
			Help: "Duration of provider calls.", Buckets: latency}, []string{"provider"}),
		requestSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "understudy_request_duration_seconds",
			Help: "Processing time of answered requests (pick-up to reply).", Buckets: latency}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "understudy_queue_wait_seconds",
			Help: "Time from a request's publication to its pick-up.", Buckets: latency}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "understudy_breaker_state",
			Help: "Breaker state per provider: 0 closed, 1 open, 2 half-open."}, []string{"provider"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "understudy_in_flight",
			Help: "Requests in hand in this process: being worked on, or (worker.ordering: conversation) waiting in the waiting room for their turn."}),
		backlogPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "understudy_backlog_pending",
			Help: "Requests in the stream not yet delivered (workers consumer num_pending)."}),
		backlogAck: prometheus.NewGauge(prometheus.GaugeOpts{Name: "understudy_backlog_ack_pending",
			Help: "Requests delivered and not yet acked, queued retries included (num_ack_pending)."}),
		backlogServable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "understudy_backlog_servable",
			Help: "The backlog more workers could serve now: pending plus ack-pending, 0 while every provider is unavailable (scale on this)."}),
		degraded: prometheus.NewCounter(prometheus.CounterOpts{Name: "understudy_replies_degraded_total",
			Help: "Replies served by a provider other than the primary."}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_dead_letters_total",
			Help: "Requests given up on, by error code."}, []string{"code"}),
		breakerChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_breaker_transitions_total",
			Help: "Breaker transitions by provider and new state."}, []string{"provider", "to"}),
		firstChunk: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "understudy_time_to_first_chunk_seconds",
			Help: "Time from a streamed provider call to its first chunk.", Buckets: latency}, []string{"provider"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.attempts, m.attemptSeconds, m.requestSeconds, m.queueWait, m.breakerState,
			m.inFlight, m.backlogPending, m.backlogAck, m.backlogServable, m.degraded, m.deadLetters, m.breakerChanges, m.firstChunk)
	}
	return m
}

func (m *Metrics) breaker(t breaker.Transition) {
	m.breakerState.WithLabelValues(t.Provider).Set(float64(t.To))
	m.breakerChanges.WithLabelValues(t.Provider, t.To.String()).Inc()
}

// SampleBreaker gives b's state gauge its current value, so that every
// provider of the chain has a sample from the start rather than only after a
// first transition. Call it before the breaker's transitions are forwarded
// to Pool.BreakerChanged, so that a later transition is never overwritten.
func (m *Metrics) SampleBreaker(b *breaker.Breaker) {
	m.breakerState.WithLabelValues(b.Name()).Set(float64(b.State()))
}
