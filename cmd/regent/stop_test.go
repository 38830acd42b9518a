package main

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// hangsUntil blocks until release is closed: a stop that hangs, whose
// name the stack dump must show.
func hangsUntil(release <-chan struct{}) { <-release }

// A stop that does not return within the grace ends in errShutdownHung,
// with every goroutine's stack written out, the hung one's included; a stop
// that returns ends clean and writes nothing.
func TestStopWithinDumpsStacksOfAHungStop(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var dump strings.Builder
	err := stopWithin(func() { hangsUntil(release) }, 20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), &dump)
	if !errors.Is(err, errShutdownHung) {
		t.Fatalf("hung stop: %v, want errShutdownHung", err)
	}
	if !strings.Contains(dump.String(), "cmd/regent.hangsUntil") || !strings.Contains(dump.String(), "goroutine ") {
		t.Fatalf("the dump lacks the hung goroutine's stack:\n%s", dump.String())
	}

	dump.Reset()
	if err := stopWithin(func() {}, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), &dump); err != nil || dump.Len() != 0 {
		t.Fatalf("clean stop: %v, %d bytes dumped", err, dump.Len())
	}
}
