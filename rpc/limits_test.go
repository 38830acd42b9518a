package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLimitParseRules(t *testing.T) {
	good := []struct {
		name string
		in   string
		want LimitRules
	}{
		{"empty", "", LimitRules{}},
		{"whitespace", " \n\t\r\n", LimitRules{}},
		{"empty object", "{}", LimitRules{}},
		{"all unlimited", `{"countLimit":-1,"countLimitPerClientIpDefault":0}`, LimitRules{CountLimit: -1}},
		{"full", `{
			"countLimit": 100,
			"countLimitPerClientIpDefault": 5,
			"countLimitPerClientIp": {"10.0.0.1": 2, "::1": -1, "fe80::1%eth0": 3},
			"countLimitPerClientApp": {"web": 10}
		}` + "\n", LimitRules{
			CountLimit:                   100,
			CountLimitPerClientIPDefault: 5,
			CountLimitPerClientIP:        map[string]int{"10.0.0.1": 2, "::1": -1, "fe80::1%eth0": 3},
			CountLimitPerClientApp:       map[string]int{"web": 10},
		}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLimitRules([]byte(tc.in))
			if err != nil {
				t.Fatalf("ParseLimitRules: %v", err)
			}
			if !limitRulesEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}

	bad := []struct {
		name, in, wantErr string
	}{
		{"unknown field", `{"countLimit":1,"countLimitPerIp":2}`, "unknown field"},
		{"negative total", `{"countLimit":-2}`, "countLimit=-2"},
		{"negative default", `{"countLimitPerClientIpDefault":-5}`, "countLimitPerClientIpDefault=-5"},
		{"negative ip", `{"countLimitPerClientIp":{"10.0.0.1":-3}}`, "countLimitPerClientIp[10.0.0.1]=-3"},
		{"negative app", `{"countLimitPerClientApp":{"web":-3}}`, "countLimitPerClientApp[web]=-3"},
		{"bad ip", `{"countLimitPerClientIp":{"10.0.0.300":1}}`, "not an IP address"},
		{"hostname as ip", `{"countLimitPerClientIp":{"example.com":1}}`, "not an IP address"},
		{"cidr as ip", `{"countLimitPerClientIp":{"10.0.0.0/8":1}}`, "not an IP address"},
		{"duplicate ip after normalisation", `{"countLimitPerClientIp":{"10.0.0.1":1,"::ffff:10.0.0.1":2}}`, "same address"},
		{"empty app", `{"countLimitPerClientApp":{"":1}}`, "empty app"},
		{"garbage", "this is not json", "JSON object"},
		{"truncated", `{"countLimit":`, "limits:"},
		{"trailing object", `{} {}`, "trailing data"},
		{"trailing garbage", `{"countLimit":1}x`, "trailing data"},
		{"array", `[]`, "JSON object"},
		{"null", `null`, "JSON object"},
		{"float", `{"countLimit":1.5}`, "limits:"},
		{"string value", `{"countLimit":"1"}`, "limits:"},
		{"overflow", `{"countLimit":99999999999999999999999}`, "limits:"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseLimitRules([]byte(tc.in))
			if err == nil {
				t.Fatalf("ParseLimitRules(%q) succeeded, want error", tc.in)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestLimitValidateJoinsErrors(t *testing.T) {
	r := LimitRules{CountLimit: -7, CountLimitPerClientIP: map[string]int{"nope": 1}}
	err := r.Validate()
	if err == nil {
		t.Fatal("Validate succeeded")
	}
	for _, want := range []string{"countLimit=-7", "countLimitPerClientIp[nope]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := (LimitRules{}).Validate(); err != nil {
		t.Fatalf("zero rules: %v", err)
	}
}

var limitT0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// limitSess builds a session created n seconds after limitT0.
func limitSess(id, ip, app string, n int) SessionInfo {
	return SessionInfo{ID: id, IP: ip, App: app, Created: limitT0.Add(time.Duration(n) * time.Second)}
}

// limitMany returns n sessions from ip with app, ids prefix0..prefixN-1.
func limitMany(prefix, ip, app string, n int) []SessionInfo {
	out := make([]SessionInfo, n)
	for i := range out {
		out[i] = limitSess(fmt.Sprintf("%s%d", prefix, i), ip, app, i)
	}
	return out
}

func limitWantRefused(t *testing.T, err error, limit string, value int) {
	t.Helper()
	var le *LimitExceededError
	if !errors.As(err, &le) {
		t.Fatalf("got %v, want *LimitExceededError %s", err, limit)
	}
	if le.Limit != limit || le.Value != value {
		t.Fatalf("refused by %s=%d, want %s=%d", le.Limit, le.Value, limit, value)
	}
	want := fmt.Sprintf("connection limit %s=%d reached", limit, value)
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
}

func TestLimitErrorMessage(t *testing.T) {
	e := &LimitExceededError{Limit: "countLimitPerClientIp[10.0.0.1]", Value: 2}
	if got, want := e.Error(), "connection limit countLimitPerClientIp[10.0.0.1]=2 reached"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestLimitAdmitUnlimited(t *testing.T) {
	live := limitMany("s", "10.0.0.1", "web", 1000)
	for _, r := range []LimitRules{
		{},
		{CountLimit: -1, CountLimitPerClientIPDefault: -1},
		{CountLimitPerClientIP: map[string]int{"10.0.0.1": -1}, CountLimitPerClientApp: map[string]int{"web": 0}},
	} {
		if err := r.Admit(live, limitSess("new", "10.0.0.1", "web", 2000)); err != nil {
			t.Fatalf("rules %+v: %v", r, err)
		}
		if got := r.Excess(live); got != nil {
			t.Fatalf("rules %+v: Excess = %v, want nil", r, got)
		}
	}
}

func TestLimitAdmitTotal(t *testing.T) {
	r := LimitRules{CountLimit: 3, CountLimitPerClientIP: map[string]int{"10.0.0.9": -1}}
	live := []SessionInfo{
		limitSess("a", "10.0.0.1", "", 0),
		limitSess("b", "10.0.0.2", "", 1),
	}
	if err := r.Admit(live, limitSess("c", "10.0.0.3", "", 2)); err != nil {
		t.Fatalf("third session refused: %v", err)
	}
	live = append(live, limitSess("c", "10.0.0.3", "", 2))
	// The total comes first, even for an IP exempted by its own entry.
	limitWantRefused(t, r.Admit(live, limitSess("d", "10.0.0.9", "", 3)), "countLimit", 3)
	// The new session itself, if passed in live by mistake, is not counted.
	if err := r.Admit(live, live[2]); err != nil {
		t.Fatalf("re-admitting a live session: %v", err)
	}
}

func TestLimitAdmitRules(t *testing.T) {
	r := LimitRules{
		CountLimit:                   100,
		CountLimitPerClientIPDefault: 3,
		CountLimitPerClientIP:        map[string]int{"10.0.0.1": 2, "10.0.0.5": -1, "2001:db8::1": 1},
		CountLimitPerClientApp:       map[string]int{"web": 1, "batch": -1},
	}
	tests := []struct {
		name  string
		live  []SessionInfo
		s     SessionInfo
		limit string // "" = admitted
		value int
	}{
		{"ip entry under limit", limitMany("x", "10.0.0.1", "", 1), limitSess("n", "10.0.0.1", "", 9), "", 0},
		{"ip entry reached", limitMany("x", "10.0.0.1", "", 2), limitSess("n", "10.0.0.1", "", 9), "countLimitPerClientIp[10.0.0.1]", 2},
		{"ip entry beats app entry", limitMany("x", "10.0.0.1", "web", 1), limitSess("n", "10.0.0.1", "web", 9), "", 0},
		{"ip entry beats default", limitMany("x", "10.0.0.5", "", 50), limitSess("n", "10.0.0.5", "", 99), "", 0},
		{"ip entry counts every app", append(limitMany("x", "10.0.0.1", "web", 1), limitSess("y", "10.0.0.1", "other", 1)), limitSess("n", "10.0.0.1", "", 9), "countLimitPerClientIp[10.0.0.1]", 2},
		{"ipv4-mapped session matches ipv4 entry", limitMany("x", "::ffff:10.0.0.1", "", 2), limitSess("n", "10.0.0.1", "", 9), "countLimitPerClientIp[10.0.0.1]", 2},
		{"ipv6 entry", limitMany("x", "2001:DB8:0::1", "", 1), limitSess("n", "2001:db8::1", "", 9), "countLimitPerClientIp[2001:db8::1]", 1},
		{"app entry reached across ips", limitMany("x", "10.0.0.2", "web", 1), limitSess("n", "10.0.0.3", "web", 9), "countLimitPerClientApp[web]", 1},
		{"app entry beats default", limitMany("x", "10.0.0.2", "batch", 10), limitSess("n", "10.0.0.2", "batch", 99), "", 0},
		{"app entry ignores other apps", limitMany("x", "10.0.0.2", "other", 2), limitSess("n", "10.0.0.2", "web", 9), "", 0},
		{"default under limit", limitMany("x", "10.0.0.2", "", 2), limitSess("n", "10.0.0.2", "", 9), "", 0},
		{"default reached", limitMany("x", "10.0.0.2", "", 3), limitSess("n", "10.0.0.2", "", 9), "countLimitPerClientIpDefault", 3},
		{"default counts every session of the ip", append(limitMany("x", "10.0.0.2", "batch", 2), limitSess("y", "10.0.0.2", "", 1)), limitSess("n", "10.0.0.2", "other", 9), "countLimitPerClientIpDefault", 3},
		{"default is per ip", limitMany("x", "10.0.0.2", "", 3), limitSess("n", "10.0.0.3", "", 9), "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Admit(tc.live, tc.s)
			if tc.limit == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			limitWantRefused(t, err, tc.limit, tc.value)
		})
	}
}

func limitIDs(ss []SessionInfo) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	return out
}

// limitRemaining returns live without the sessions in gone (by index
// identity, compared via ID+Created+IP+App).
func limitRemaining(live, gone []SessionInfo) []SessionInfo {
	var out []SessionInfo
	left := slices.Clone(gone)
	for _, s := range live {
		if i := slices.Index(left, s); i >= 0 {
			left = slices.Delete(left, i, i+1)
			continue
		}
		out = append(out, s)
	}
	return out
}

// limitCheckHolds fails unless every session in live would be admitted
// against the others.
func limitCheckHolds(t *testing.T, r LimitRules, live []SessionInfo) {
	t.Helper()
	for i, s := range live {
		others := slices.Delete(slices.Clone(live), i, i+1)
		if err := r.Admit(others, s); err != nil {
			t.Fatalf("after Excess, session %s would be refused: %v", s.ID, err)
		}
	}
}

func TestLimitExcessAfterLowering(t *testing.T) {
	live := []SessionInfo{
		// 10.0.0.1 has its own entry: 4 sessions, limit lowered to 2.
		limitSess("ip1-a", "10.0.0.1", "api", 1),
		limitSess("ip1-b", "10.0.0.1", "api", 5),
		limitSess("ip1-c", "10.0.0.1", "", 3),
		limitSess("ip1-d", "10.0.0.1", "", 7),
		// app web from other IPs: 3 sessions, limit 1.
		limitSess("web-a", "10.0.0.2", "web", 2),
		limitSess("web-b", "10.0.0.3", "web", 8),
		limitSess("web-c", "10.0.0.4", "web", 4),
		// default-governed: 10.0.0.5 has 3, default limit 2.
		limitSess("d5-a", "10.0.0.5", "", 6),
		limitSess("d5-b", "10.0.0.5", "", 9),
		limitSess("d5-c", "10.0.0.5", "x", 0),
		// 10.0.0.6 within default.
		limitSess("d6-a", "10.0.0.6", "", 10),
	}
	before := LimitRules{}
	if got := before.Excess(live); len(got) != 0 {
		t.Fatalf("unlimited: Excess = %v", limitIDs(got))
	}
	r := LimitRules{
		CountLimitPerClientIPDefault: 2,
		CountLimitPerClientIP:        map[string]int{"10.0.0.1": 2},
		CountLimitPerClientApp:       map[string]int{"web": 1},
	}
	got := r.Excess(live)
	want := []string{"d5-b", "web-b", "ip1-d", "ip1-b", "web-c"} // newest first
	if !slices.Equal(limitIDs(got), want) {
		t.Fatalf("Excess = %v, want %v", limitIDs(got), want)
	}
	rest := limitRemaining(live, got)
	limitCheckHolds(t, r, rest)
	if again := r.Excess(rest); len(again) != 0 {
		t.Fatalf("second Excess = %v, want none", limitIDs(again))
	}

	// Now lower the total as well: after the per-client rules, the newest
	// remaining overall go.
	r.CountLimit = 4
	got = r.Excess(live)
	want = []string{"d6-a", "d5-b", "web-b", "ip1-d", "d5-a", "ip1-b", "web-c"}
	if !slices.Equal(limitIDs(got), want) {
		t.Fatalf("Excess with total = %v, want %v", limitIDs(got), want)
	}
	rest = limitRemaining(live, got)
	if len(rest) != 4 {
		t.Fatalf("%d sessions remain, want 4", len(rest))
	}
	limitCheckHolds(t, r, rest)
}

// TestLimitExcessCrossRule: a per-app rule counts every session with the
// app, also those governed by an IP entry (as Admit does), but only the
// sessions it governs are asked to leave.
func TestLimitExcessCrossRule(t *testing.T) {
	r := LimitRules{
		CountLimitPerClientIP:  map[string]int{"10.0.0.1": -1},
		CountLimitPerClientApp: map[string]int{"web": 2},
	}
	live := []SessionInfo{
		limitSess("exempt-a", "10.0.0.1", "web", 5),
		limitSess("exempt-b", "10.0.0.1", "web", 6),
		limitSess("web-old", "10.0.0.2", "web", 0),
		limitSess("web-new", "10.0.0.3", "web", 1),
	}
	got := r.Excess(live)
	if want := []string{"web-new", "web-old"}; !slices.Equal(limitIDs(got), want) {
		t.Fatalf("Excess = %v, want %v", limitIDs(got), want)
	}
	limitCheckHolds(t, r, limitRemaining(live, got))
	limitWantRefused(t, r.Admit(live[:2], limitSess("n", "10.0.0.4", "web", 9)), "countLimitPerClientApp[web]", 2)
}

func TestLimitExcessTieBreakAndDeterminism(t *testing.T) {
	live := []SessionInfo{
		limitSess("b", "10.0.0.1", "", 0),
		limitSess("a", "10.0.0.1", "", 0),
		limitSess("c", "10.0.0.1", "", 0),
	}
	r := LimitRules{CountLimitPerClientIPDefault: 1}
	want := []string{"c", "b"}
	for range 20 {
		rand.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		if got := limitIDs(r.Excess(live)); !slices.Equal(got, want) {
			t.Fatalf("Excess = %v, want %v", got, want)
		}
	}
}

// TestLimitExcessRandom checks, on random sessions and rules, that Excess
// never repeats a session, returns only input sessions, restores every limit,
// and is independent of input order.
func TestLimitExcessRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var sawExcess, sawWithin int
	defer func() {
		// Both answers of WithinCounts were exercised.
		if sawExcess == 0 || sawWithin == 0 {
			t.Errorf("random cases: %d with excess, %d within counts; want both", sawExcess, sawWithin)
		}
	}()
	ips := []string{"10.0.0.1", "10.0.0.2", "::ffff:10.0.0.3", "10.0.0.3", "2001:db8::1"}
	apps := []string{"", "web", "api", "batch"}
	limit := func() int { return rng.IntN(6) - 1 }
	for iter := range 500 {
		r := LimitRules{CountLimit: limit() * rng.IntN(4), CountLimitPerClientIPDefault: limit()}
		if rng.IntN(2) == 0 {
			r.CountLimitPerClientIP = map[string]int{ips[rng.IntN(2)]: limit(), "10.0.0.3": limit()}
		}
		if rng.IntN(2) == 0 {
			r.CountLimitPerClientApp = map[string]int{apps[1+rng.IntN(3)]: limit()}
		}
		n := rng.IntN(25)
		live := make([]SessionInfo, n)
		for i := range live {
			live[i] = limitSess(fmt.Sprintf("s%02d", i), ips[rng.IntN(len(ips))], apps[rng.IntN(len(apps))], rng.IntN(8))
		}
		got := r.Excess(live)
		var counts SessionCounts
		for _, s := range live {
			counts.Add(s, 1)
		}
		if r.WithinCounts(counts) && len(got) > 0 {
			t.Fatalf("iter %d: WithinCounts says no excess, Excess returns %v (rules %+v)", iter, limitIDs(got), r)
		}
		if len(got) > 0 {
			sawExcess++
		} else if r.WithinCounts(counts) {
			sawWithin++
		}
		seen := map[string]bool{}
		for _, s := range got {
			if seen[s.ID] {
				t.Fatalf("iter %d: %s returned twice", iter, s.ID)
			}
			seen[s.ID] = true
			if !slices.Contains(live, s) {
				t.Fatalf("iter %d: %s not in input", iter, s.ID)
			}
		}
		limitCheckHolds(t, r, limitRemaining(live, got))
		shuffled := slices.Clone(live)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again := r.Excess(shuffled); !slices.Equal(limitIDs(again), limitIDs(got)) {
			t.Fatalf("iter %d: order-dependent: %v vs %v", iter, limitIDs(again), limitIDs(got))
		}
	}
}

func limitTestLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// limitRecHandler records log messages so tests can wait for them.
type limitRecHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *limitRecHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *limitRecHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *limitRecHandler) WithGroup(string) slog.Handler            { return h }
func (h *limitRecHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Level.String()+" "+r.Message)
	return nil
}

func (h *limitRecHandler) count(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func limitWriteFile(t *testing.T, path, content string) {
	t.Helper()
	// Write a temp file and rename it over path, like many editors and
	// config managers do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// limitWaitFor polls cond until it holds, failing after 5s.
func limitWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLimitWatcherNoFile(t *testing.T) {
	w, err := NewLimitWatcher("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !limitRulesEqual(w.Rules(), LimitRules{}) {
		t.Fatalf("rules %+v, want unlimited", w.Rules())
	}
	if changed, err := w.Reload(); changed || err != nil {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, time.Millisecond); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestLimitWatcherStartupErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewLimitWatcher(filepath.Join(dir, "missing.json"), limitTestLogger(t)); err == nil {
		t.Fatal("missing file at start-up accepted")
	}
	bad := filepath.Join(dir, "bad.json")
	limitWriteFile(t, bad, `{"countLimit": -9}`)
	if _, err := NewLimitWatcher(bad, limitTestLogger(t)); err == nil {
		t.Fatal("invalid file at start-up accepted")
	}
	empty := filepath.Join(dir, "empty.json")
	limitWriteFile(t, empty, "\n")
	w, err := NewLimitWatcher(empty, limitTestLogger(t))
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if !limitRulesEqual(w.Rules(), LimitRules{}) {
		t.Fatalf("empty file: rules %+v", w.Rules())
	}
}

func TestLimitWatcherReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	limitWriteFile(t, path, `{"countLimit": 10}`)
	w, err := NewLimitWatcher(path, limitTestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := w.Reload(); changed || err != nil {
		t.Fatalf("Reload of unchanged file = %v, %v", changed, err)
	}
	limitWriteFile(t, path, `{"countLimit": 3, "countLimitPerClientApp": {"web": 1}}`)
	if changed, err := w.Reload(); !changed || err != nil {
		t.Fatalf("Reload = %v, %v; want changed", changed, err)
	}
	if got := w.Rules(); got.CountLimit != 3 || got.CountLimitPerClientApp["web"] != 1 {
		t.Fatalf("rules %+v", got)
	}
	limitWriteFile(t, path, `{"countLimit": 3, "bogus": 1}`)
	if changed, err := w.Reload(); changed || err == nil {
		t.Fatalf("Reload of bad file = %v, %v; want error", changed, err)
	}
	if got := w.Rules(); got.CountLimit != 3 {
		t.Fatalf("bad file replaced rules: %+v", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if changed, err := w.Reload(); changed || err == nil {
		t.Fatalf("Reload of missing file = %v, %v; want error", changed, err)
	}
	if got := w.Rules(); got.CountLimit != 3 {
		t.Fatalf("missing file replaced rules: %+v", got)
	}
}

func TestLimitWatcherRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.json")
	limitWriteFile(t, path, `{"countLimit": 10, "countLimitPerClientIpDefault": 5}`)
	rec := &limitRecHandler{}
	w, err := NewLimitWatcher(path, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Rules(); got.CountLimit != 10 || got.CountLimitPerClientIPDefault != 5 {
		t.Fatalf("initial rules %+v", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, 10*time.Millisecond)
	}()
	defer func() {
		cancel()
		<-done
	}()

	// Lower the limits.
	limitWriteFile(t, path, `{"countLimit": 2, "countLimitPerClientIpDefault": 1}`)
	limitWaitFor(t, "lowered limits", func() bool {
		r := w.Rules()
		return r.CountLimit == 2 && r.CountLimitPerClientIPDefault == 1
	})

	// Same size, in place, quickly: must still be noticed (content hash).
	if err := os.WriteFile(path, []byte(`{"countLimit": 3, "countLimitPerClientIpDefault": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	limitWaitFor(t, "same-size rewrite", func() bool { return w.Rules().CountLimit == 3 })

	// A bad rewrite keeps the old rules; wait until the watcher has
	// rejected it (it logs a warning).
	warnsBefore := rec.count("invalid limits file")
	limitWriteFile(t, path, `{"countLimit": 1, "nonsense": true}`)
	limitWaitFor(t, "bad file to be rejected", func() bool { return rec.count("invalid limits file") > warnsBefore })
	if got := w.Rules(); got.CountLimit != 3 || got.CountLimitPerClientIPDefault != 1 {
		t.Fatalf("bad rewrite changed rules to %+v", got)
	}
	// A removed file keeps the rules too; recreating it is picked up.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	limitWriteFile(t, path, `{"countLimitPerClientIp": {"10.0.0.1": 4}}`)
	limitWaitFor(t, "recreated file", func() bool {
		r := w.Rules()
		return r.CountLimit == 0 && r.CountLimitPerClientIP["10.0.0.1"] == 4
	})

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func FuzzParseLimitRules(f *testing.F) {
	for _, seed := range []string{
		"",
		"{}",
		`{"countLimit": 100, "countLimitPerClientIpDefault": 5}`,
		`{"countLimitPerClientIp": {"10.0.0.1": 2, "::ffff:10.0.0.2": -1}, "countLimitPerClientApp": {"web": 1}}`,
		`{"countLimit": -2}`,
		`{"countLimitPerClientIp": {"nope": 1}}`,
		`{} trailing`,
		"null",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseLimitRules(data)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed rules do not validate: %v\ninput: %q", err, data)
		}
		// Admit and Excess must not panic on whatever was accepted.
		var live []SessionInfo
		for ip := range r.CountLimitPerClientIP {
			live = append(live, SessionInfo{ID: ip, IP: ip})
		}
		for app := range r.CountLimitPerClientApp {
			live = append(live, SessionInfo{ID: "app-" + app, IP: "10.0.0.1", App: app})
		}
		_ = r.Admit(live, SessionInfo{ID: "new", IP: "10.0.0.1", App: "web"})
		limitCheckHolds(t, r, limitRemaining(live, r.Excess(live)))
	})
}

// BenchmarkLimitAdmit: admitting one session against n live ones, from the
// list of them (Admit counts the list first, parsing each session's IP, as
// the manager did on every new session before it kept counts) and from the
// counts the manager keeps (AdmitCounts). The counts' cost stays flat in
// n; the ratio is printed.
func BenchmarkLimitAdmit(b *testing.B) {
	r, err := ParseLimitRules([]byte(`{"countLimit":1000000,"countLimitPerClientIpDefault":1000000}`))
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{100, 10000} {
		var live []SessionInfo
		var counts SessionCounts
		for i := range n {
			s := limitSess(fmt.Sprintf("s%d", i), fmt.Sprintf("10.0.%d.%d", i/250, i%250), "web", i)
			live = append(live, s)
			counts.Add(s, 1)
		}
		next := limitSess("new", "10.9.9.9", "web", n)
		var scan, kept float64
		b.Run(fmt.Sprintf("sessions=%d/scan", n), func(b *testing.B) {
			for b.Loop() {
				if err := r.Admit(live, next); err != nil {
					b.Fatal(err)
				}
			}
			scan = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
		b.Run(fmt.Sprintf("sessions=%d/counts", n), func(b *testing.B) {
			for b.Loop() {
				if err := r.AdmitCounts(counts, next); err != nil {
					b.Fatal(err)
				}
			}
			kept = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(scan/kept, "scan/counts")
		})
	}
}

// BenchmarkLimitCheck: what the session check (every 3 s, under the
// manager's lock) spends on the limits with n live sessions, from 100
// client IPs, under rules nothing exceeds: Excess over every session, as
// the check ran it every time before, beside WithinCounts on the kept
// counts, which now spares the check that pass.
func BenchmarkLimitCheck(b *testing.B) {
	for _, rules := range []string{`{}`, `{"countLimit":1000000,"countLimitPerClientIpDefault":100000}`} {
		r, err := ParseLimitRules([]byte(rules))
		if err != nil {
			b.Fatal(err)
		}
		name := "none"
		if rules != `{}` {
			name = "loose"
		}
		n := 100000
		var live []SessionInfo
		var counts SessionCounts
		for i := range n {
			s := limitSess(fmt.Sprintf("s%d", i), fmt.Sprintf("10.0.0.%d", i%100), "web", i)
			live = append(live, s)
			counts.Add(s, 1)
		}
		var scan float64
		b.Run(fmt.Sprintf("rules=%s/sessions=%d/excess", name, n), func(b *testing.B) {
			for b.Loop() {
				if ex := r.Excess(live); len(ex) != 0 {
					b.Fatalf("%d in excess", len(ex))
				}
			}
			scan = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
		b.Run(fmt.Sprintf("rules=%s/sessions=%d/within-counts", name, n), func(b *testing.B) {
			for b.Loop() {
				if !r.WithinCounts(counts) {
					b.Fatal("not within counts")
				}
			}
			b.ReportMetric(scan/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "excess/within")
		})
	}
}
