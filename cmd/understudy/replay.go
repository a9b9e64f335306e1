package main

import (
	"context"
	"fmt"
	"io"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/service"
)

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "understudy replay: not built yet")
	return exitFailed
}

func demoReport(ctx context.Context, svc *service.Service, subj chat.Subjects, format string, w io.Writer) error {
	return nil
}
