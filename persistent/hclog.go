package persistent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger returns the hclog.Logger raft wants, writing JSON lines into
// a bridge that re-logs each one through logger at its level, with its
// fields as attributes.
func newHCLogger(logger *slog.Logger) hclog.Logger {
	level := hclog.Info
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      level,
		Output:     hclogBridge{logger.With("lib", "raft")},
		JSONFormat: true,
	})
}

type hclogBridge struct{ logger *slog.Logger }

// Write logs each JSON line of p; it never fails.
func (b hclogBridge) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			b.logger.Info(string(bytes.TrimSpace(line)))
			continue
		}
		level := slog.LevelInfo
		switch rec["@level"] {
		case "trace", "debug":
			level = slog.LevelDebug
		case "warn":
			level = slog.LevelWarn
		case "error":
			level = slog.LevelError
		}
		msg, _ := rec["@message"].(string)
		attrs := make([]slog.Attr, 0, len(rec))
		for k, v := range rec {
			if k != "" && k[0] != '@' {
				attrs = append(attrs, slog.Any(k, v))
			}
		}
		b.logger.LogAttrs(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}
