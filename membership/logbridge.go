package membership

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// logBridge is the io.Writer behind the *log.Logger given to memberlist. It
// turns memberlist's "[LEVEL] memberlist: message" lines into slog records
// at the matching level.
type logBridge struct {
	logger *slog.Logger
}

// newMemberlistLogger returns a *log.Logger for memberlist that writes to
// logger (no timestamp or prefix: slog adds its own).
func newMemberlistLogger(logger *slog.Logger) *log.Logger {
	return log.New(logBridge{logger: logger.With("lib", "memberlist")}, "", 0)
}

// Write logs each line of p. It never fails, so memberlist never sees a
// logging error.
func (b logBridge) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		level, msg := parseMemberlistLine(string(line))
		if msg == "" {
			continue
		}
		ctx := context.Background()
		if b.logger.Enabled(ctx, level) {
			b.logger.Log(ctx, level, msg)
		}
	}
	return len(p), nil
}

// parseMemberlistLine splits "[WARN] memberlist: text" into its level and
// "text". Lines without a known level prefix are logged at info.
func parseMemberlistLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			known := true
			switch line[1:end] {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN", "WARNING":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			default:
				known = false
			}
			if known {
				line = strings.TrimSpace(line[end+1:])
			}
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	return level, line
}
