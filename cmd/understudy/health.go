package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// runHealth probes a health URL: a healthcheck for images without a shell.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, _ := newFlags("health", stderr)
	url := fs.String("url", "http://127.0.0.1:9090/readyz", "URL that must answer 200")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "understudy health: %v\n", err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "understudy health: %v\n", err)
		return exitFailed
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "understudy health: %s: %s %s\n", *url, resp.Status, body)
		return exitFailed
	}
	fmt.Fprintf(stdout, "%s", body)
	return exitOK
}
