package membership

import (
	"log/slog"
	"testing"
)

func TestParseMemberlistLine(t *testing.T) {
	tests := []struct {
		in    string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Initiating push/pull sync with: b 127.0.0.1:7946\n", slog.LevelDebug, "Initiating push/pull sync with: b 127.0.0.1:7946"},
		{"[INFO] memberlist: Marking b as failed", slog.LevelInfo, "Marking b as failed"},
		{"[WARN] memberlist: Refuting a suspect message (from: a)", slog.LevelWarn, "Refuting a suspect message (from: a)"},
		{"[ERR] memberlist: Failed to send UDP ping: boom", slog.LevelError, "Failed to send UDP ping: boom"},
		{"[ERROR] something", slog.LevelError, "something"},
		{"[ERR] Failed to shutdown transport: x", slog.LevelError, "Failed to shutdown transport: x"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
		{"[weird] memberlist: text", slog.LevelInfo, "[weird] memberlist: text"},
		{"   \n", slog.LevelInfo, ""},
	}
	for _, tt := range tests {
		level, msg := parseMemberlistLine(tt.in)
		if level != tt.level || msg != tt.msg {
			t.Errorf("parse(%q) = %v %q, want %v %q", tt.in, level, msg, tt.level, tt.msg)
		}
	}
}

func TestMemberlistLoggerBridge(t *testing.T) {
	logs := newLogRecorder(t)
	l := newMemberlistLogger(logs.logger())
	l.Printf("[WARN] memberlist: Binding to public address without encryption!")
	l.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
	if n := logs.count(func(r logRecord) bool {
		return r.level == slog.LevelWarn && r.msg == "Binding to public address without encryption!" && r.attrs["lib"] == "memberlist"
	}); n != 1 {
		t.Fatalf("warn line logged %d times", n)
	}
	if n := logs.count(func(r logRecord) bool { return r.level == slog.LevelDebug }); n != 1 {
		t.Fatalf("debug line logged %d times", n)
	}
}
