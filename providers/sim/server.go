package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is how the server answers.
type Mode string

// Modes.
const (
	ModeOK           Mode = "ok"
	ModeError        Mode = "error"        // 503
	ModeRateLimit    Mode = "ratelimit"    // 429 with Retry-After
	ModeHang         Mode = "hang"         // no answer until the client gives up
	ModeGarbage      Mode = "garbage"      // 200, body not JSON
	ModeEmpty        Mode = "empty"        // 200, JSON without choices
	ModeReset        Mode = "reset"        // headers and half a body, then the connection is cut
	ModeUnauthorized Mode = "unauthorized" // 401
	ModeReject       Mode = "reject"       // 400
	// The stream modes act on a streamed answer after Config.CutAfter
	// chunks; a request that does not stream gets the non-streaming
	// failure of the same kind.
	ModeCut        Mode = "cut"         // connection cut (not streaming: as reset)
	ModeErrorEvent Mode = "error_event" // an error event (not streaming: 503)
	ModeStall      Mode = "stall"       // no more chunks (not streaming: as hang)
)

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeOK, ModeError, ModeRateLimit, ModeHang, ModeGarbage, ModeEmpty, ModeReset, ModeUnauthorized, ModeReject,
		ModeCut, ModeErrorEvent, ModeStall:
		return m, nil
	}
	return "", fmt.Errorf("unknown sim mode %q (ok, error, ratelimit, hang, garbage, empty, reset, unauthorized, reject, cut, error_event, stall)", s)
}

// Phase switches the server to Mode from After (counted from Start) for For.
type Phase struct {
	After time.Duration `yaml:"after"`
	For   time.Duration `yaml:"for"`
	Mode  Mode          `yaml:"mode"`
}

// Config shapes a simulated provider. The zero value answers at once, always.
type Config struct {
	// Model is reported in responses. Default "sim-1".
	Model string `yaml:"model"`
	// Latency is added before every answer. Default 0.
	Latency time.Duration `yaml:"latency"`
	// Jitter adds a uniformly random extra latency in [0, Jitter). Default 0.
	Jitter time.Duration `yaml:"jitter"`
	// FailureRate is the share (0..1) of requests answered with 503 while the
	// mode is ok. Default 0.
	FailureRate float64 `yaml:"failure_rate"`
	// RetryAfter is sent with 429 answers, in whole seconds. Default 1s.
	RetryAfter time.Duration `yaml:"retry_after"`
	// Script is a list of timed phases overriding the mode. Default none.
	Script []Phase `yaml:"script"`
	// ChunkDelay is the wait between two chunks of a streamed answer (the
	// first comes after Latency). Default 0.
	ChunkDelay time.Duration `yaml:"chunk_delay"`
	// CutAfter is how many chunks a streamed answer sends before the
	// failure of a stream mode (cut, error_event, stall). Default 2.
	CutAfter int `yaml:"cut_after"`
	// Words pads every answer to at least this many words, so that a
	// streamed answer has that many chunks. Default 0: the answer as is.
	Words int `yaml:"words"`
}

// Validate reports the first invalid field by its YAML key (below the
// provider's "sim" key).
func (c Config) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"latency", c.Latency}, {"jitter", c.Jitter}, {"retry_after", c.RetryAfter}, {"chunk_delay", c.ChunkDelay}} {
		if d.v < 0 {
			return fmt.Errorf("sim.%s: must not be negative, got %s", d.key, d.v)
		}
	}
	if c.CutAfter < 0 {
		return fmt.Errorf("sim.cut_after: must not be negative, got %d", c.CutAfter)
	}
	if c.Words < 0 || c.Words > 100000 {
		return fmt.Errorf("sim.words: must be 0 to 100000, got %d", c.Words)
	}
	if c.FailureRate < 0 || c.FailureRate > 1 {
		return fmt.Errorf("sim.failure_rate: must be within [0, 1], got %v", c.FailureRate)
	}
	for i, p := range c.Script {
		if _, err := ParseMode(string(p.Mode)); err != nil {
			return fmt.Errorf("sim.script[%d].mode: %w", i, err)
		}
		if p.After < 0 {
			return fmt.Errorf("sim.script[%d].after: must not be negative, got %s", i, p.After)
		}
		if p.For <= 0 {
			return fmt.Errorf("sim.script[%d].for: must be positive, got %s", i, p.For)
		}
	}
	return nil
}

// Server is a simulated provider. Use New, then ServeHTTP or Start.
type Server struct {
	cfg     Config
	started time.Time
	mode    atomic.Value // Mode
	latency atomic.Int64 // time.Duration
	hits    atomic.Int64
	byMode  sync.Map // Mode → *atomic.Int64
	closing chan struct{}
	once    sync.Once
	httpSrv *http.Server
	url     string

	recMu    sync.Mutex
	recKeep  int        // how many bodies Received keeps; 0: none
	received []Received // the last recKeep, oldest first
}

// New returns a server for cfg, in ModeOK, its script clock started now.
func New(cfg Config) *Server {
	if cfg.Model == "" {
		cfg.Model = "sim-1"
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.CutAfter == 0 {
		cfg.CutAfter = 2
	}
	s := &Server{cfg: cfg, started: time.Now(), closing: make(chan struct{})}
	s.mode.Store(ModeOK)
	s.latency.Store(int64(cfg.Latency))
	return s
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves until
// Close. It returns the base URL clients use (ending in /v1).
func (s *Server) Start(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("sim: listen %s: %w", addr, err)
	}
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.httpSrv.Serve(ln) }()
	s.url = "http://" + ln.Addr().String() + "/v1"
	return s.url, nil
}

// URL is the base URL Start returned.
func (s *Server) URL() string { return s.url }

// Close releases hanging requests and stops a started server. Answers in
// flight get a short grace; connections still open after it are cut (a
// client's pooled connection that never sent a request counts as busy for
// net/http's Shutdown for 5 seconds).
func (s *Server) Close() error {
	s.once.Do(func() { close(s.closing) })
	if s.httpSrv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.httpSrv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return s.httpSrv.Close()
	}
	return err
}

// SetMode switches how the server answers from now on (a script phase in
// force still wins).
func (s *Server) SetMode(m Mode) { s.mode.Store(m) }

// SetLatency changes the latency added before every answer from now on.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// Mode is the mode in force now.
func (s *Server) Mode() Mode {
	elapsed := time.Since(s.started)
	for _, p := range s.cfg.Script {
		if elapsed >= p.After && elapsed < p.After+p.For {
			return p.Mode
		}
	}
	return s.mode.Load().(Mode)
}

// Hits is how many chat-completion requests the server received.
func (s *Server) Hits() int64 { return s.hits.Load() }

// HitsIn is how many requests were answered in mode m.
func (s *Server) HitsIn(m Mode) int64 {
	if c, ok := s.byMode.Load(m); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

type completionRequest struct {
	Model       string    `json:"model"`
	Messages    []Message `json:"messages"`
	MaxTokens   *int      `json:"max_tokens"`
	Temperature *float64  `json:"temperature"`
	Stream      bool      `json:"stream"`
}

// Message is one message of a request body.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Received is a chat-completion request body as the server decoded it.
type Received struct {
	Model    string
	Messages []Message
	// MaxTokens and Temperature are nil when the body had none.
	MaxTokens   *int
	Temperature *float64
	// Stream is true when the body asked for a streamed answer.
	Stream bool
}

// Record makes the server keep the bodies of the last n chat-completion
// requests it receives from now on (0, the default, keeps none), for
// Received.
func (s *Server) Record(n int) {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	s.recKeep = n
	if len(s.received) > n {
		s.received = append([]Received(nil), s.received[len(s.received)-n:]...)
	}
}

// Received is the bodies recorded (see Record), oldest first.
func (s *Server) Received() []Received {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	return append([]Received(nil), s.received...)
}

func (s *Server) record(req completionRequest) {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	if s.recKeep == 0 {
		return
	}
	if len(s.received) == s.recKeep {
		s.received = append(s.received[:0], s.received[1:]...)
	}
	s.received = append(s.received, Received(req))
}

// ServeHTTP answers chat-completion requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions") {
		http.Error(w, `{"error":{"message":"not found","type":"invalid_request_error"}}`, http.StatusNotFound)
		return
	}
	s.hits.Add(1)
	mode := s.Mode()
	if mode == ModeOK && s.cfg.FailureRate > 0 && rand.Float64() < s.cfg.FailureRate {
		mode = ModeError
	}
	c, _ := s.byMode.LoadOrStore(mode, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)

	var req completionRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "request body is not a chat completion request")
		return
	}
	s.record(req)
	if req.Stream {
		s.stream(w, r, req, mode)
		return
	}
	if mode == ModeHang || mode == ModeStall {
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return
	}
	if !s.wait(r.Context()) {
		return
	}
	switch mode {
	case ModeError, ModeErrorEvent:
		writeError(w, http.StatusServiceUnavailable, "server_error", "simulated outage")
	case ModeRateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int((s.cfg.RetryAfter+time.Second-1)/time.Second)))
		writeError(w, http.StatusTooManyRequests, "rate_limit_error", "simulated rate limit")
	case ModeUnauthorized:
		writeError(w, http.StatusUnauthorized, "authentication_error", "simulated bad API key")
	case ModeReject:
		writeError(w, http.StatusBadRequest, "invalid_request_error", "simulated rejection")
	case ModeGarbage:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("<html>502 Bad Gateway</html>"))
	case ModeEmpty:
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"id":"sim","object":"chat.completion","created":%d,"model":%q,"choices":[]}`, time.Now().Unix(), s.cfg.Model)
	case ModeReset, ModeCut:
		s.reset(w)
	default:
		s.answer(w, req)
	}
}

// wait sleeps the configured latency; false when the client went away.
func (s *Server) wait(ctx context.Context) bool {
	d := time.Duration(s.latency.Load())
	if s.cfg.Jitter > 0 {
		d += rand.N(s.cfg.Jitter)
	}
	if d <= 0 {
		return true
	}
	return s.pause(ctx, d)
}

// content is the answer to req, and the prompt's size in words.
func (s *Server) content(req completionRequest) (content string, prompt int) {
	last := req.Messages[len(req.Messages)-1].Content
	content = fmt.Sprintf("[%s] you said %d words", s.cfg.Model, len(strings.Fields(last)))
	if n := s.cfg.Words - len(strings.Fields(content)); n > 0 {
		content += strings.Repeat(" la", n)
	}
	for _, m := range req.Messages {
		prompt += len(strings.Fields(m.Content))
	}
	return content, prompt
}

func (s *Server) answer(w http.ResponseWriter, req completionRequest) {
	content, prompt := s.content(req)
	resp := map[string]any{
		"id":      fmt.Sprintf("sim-%d", s.hits.Load()),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   s.cfg.Model,
		"choices": []map[string]any{{
			"index":         0,
			"finish_reason": "stop",
			"message":       map[string]any{"role": "assistant", "content": content},
		}},
		"usage": map[string]any{
			"prompt_tokens": prompt, "completion_tokens": len(strings.Fields(content)),
			"total_tokens": prompt + len(strings.Fields(content)),
		},
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// reset sends headers and the start of a body, then cuts the connection.
func (s *Server) reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"id\":\"sim\",\"choices\":[{\"mess")
	_ = buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST, not FIN
	}
	_ = conn.Close()
}

func writeError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": nil}})
}
