package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Names of the limits, as they appear in the limits file and in
// LimitExceededError.Limit.
const (
	limitNameTotal     = "countLimit"
	limitNameIPDefault = "countLimitPerClientIpDefault"
	limitNameIP        = "countLimitPerClientIp"
	limitNameApp       = "countLimitPerClientApp"
)

// LimitRules is the content of the limits file (--limits FILE), modelled on
// Nacos' ConnectionLimitRule. A limit of -1 or 0 (or an absent field) means
// unlimited; the zero value is "no limits at all".
//
// Which per-client rule governs a session is decided as in Nacos 2.1: the
// per-IP rule if the session's IP has an entry in CountLimitPerClientIP, else
// the per-app rule if its app label has an entry in CountLimitPerClientApp,
// else CountLimitPerClientIPDefault. An entry that is present governs even when
// its value is -1 or 0, so an entry of -1 exempts that IP (or app) from the
// rules below it. Per-IP rules count every session from the IP; per-app rules
// count every session with the app label, whatever its IP.
//
// Rules values are shared; treat the maps as read-only.
type LimitRules struct {
	CountLimit                   int            `json:"countLimit"` // total sessions on this node
	CountLimitPerClientIPDefault int            `json:"countLimitPerClientIpDefault"`
	CountLimitPerClientIP        map[string]int `json:"countLimitPerClientIp"`  // IP -> limit, overrides the default
	CountLimitPerClientApp       map[string]int `json:"countLimitPerClientApp"` // app label -> limit
}

// ParseLimitRules parses and validates the content of a limits file. It is
// strict: unknown fields, trailing data, limits below -1, IP keys that are not
// IP addresses and empty app keys are errors. An empty or all-whitespace file
// means unlimited.
func ParseLimitRules(data []byte) (LimitRules, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return LimitRules{}, nil
	}
	if trimmed[0] != '{' {
		return LimitRules{}, errors.New("limits: file must contain a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	var r LimitRules
	if err := dec.Decode(&r); err != nil {
		return LimitRules{}, fmt.Errorf("limits: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return LimitRules{}, errors.New("limits: trailing data after the JSON object")
	}
	if err := r.Validate(); err != nil {
		return LimitRules{}, err
	}
	return r, nil
}

// Validate reports every problem in r (joined), or nil.
func (r LimitRules) Validate() error {
	var errs []error
	check := func(name string, v int) {
		if v < -1 {
			errs = append(errs, fmt.Errorf("limits: %s=%d: must be >= -1 (-1 or 0 means unlimited)", name, v))
		}
	}
	check(limitNameTotal, r.CountLimit)
	check(limitNameIPDefault, r.CountLimitPerClientIPDefault)
	seen := make(map[string]string, len(r.CountLimitPerClientIP))
	for _, k := range slices.Sorted(maps.Keys(r.CountLimitPerClientIP)) {
		name := fmt.Sprintf("%s[%s]", limitNameIP, k)
		check(name, r.CountLimitPerClientIP[k])
		a, err := netip.ParseAddr(k)
		if err != nil {
			errs = append(errs, fmt.Errorf("limits: %s: key is not an IP address: %w", name, err))
			continue
		}
		c := a.Unmap().String()
		if prev, dup := seen[c]; dup {
			errs = append(errs, fmt.Errorf("limits: %s: same address as %q", name, prev))
			continue
		}
		seen[c] = k
	}
	for _, k := range slices.Sorted(maps.Keys(r.CountLimitPerClientApp)) {
		name := fmt.Sprintf("%s[%s]", limitNameApp, k)
		if k == "" {
			errs = append(errs, fmt.Errorf("limits: %s: empty app name", limitNameApp))
		}
		check(name, r.CountLimitPerClientApp[k])
	}
	return errors.Join(errs...)
}

// SessionInfo is what the limit checker needs to know about one live session.
type SessionInfo struct {
	ID      string
	IP      string // client IP; IPv4-mapped IPv6 addresses match IPv4 entries
	App     string // the session's hello label "app"; "" when absent
	Created time.Time
}

// LimitExceededError explains a refusal: which limit was reached, and its
// value.
type LimitExceededError struct {
	// Limit names the limit: "countLimit", "countLimitPerClientIp[10.0.0.1]",
	// "countLimitPerClientApp[web]" or "countLimitPerClientIpDefault".
	Limit string
	Value int
}

func (e *LimitExceededError) Error() string {
	return fmt.Sprintf("connection limit %s=%d reached", e.Limit, e.Value)
}

// Admit decides whether session s may be added to the live sessions (which
// must not include s; an entry with s's non-empty ID is ignored). It returns
// nil or a *LimitExceededError. The total limit is checked first, then the one
// per-client rule that governs s (see LimitRules).
func (r LimitRules) Admit(live []SessionInfo, s SessionInfo) error {
	var c SessionCounts
	for _, l := range live {
		if s.ID == "" || l.ID != s.ID {
			c.Add(l, 1)
		}
	}
	return r.AdmitCounts(c, s)
}

// SessionCounts counts live sessions as the limits see them: in all, per
// canonical client IP and per app. The session manager keeps one up to
// date as sessions come and go, so that admitting a session costs the
// same at 10 or 100,000 sessions.
type SessionCounts struct {
	Total int
	ByIP  map[string]int // by limitCanonicalIP
	ByApp map[string]int
}

// Add counts s in (delta 1) or out (delta -1).
func (c *SessionCounts) Add(s SessionInfo, delta int) {
	if c.ByIP == nil {
		c.ByIP, c.ByApp = map[string]int{}, map[string]int{}
	}
	c.Total += delta
	bump := func(m map[string]int, k string) {
		if m[k] += delta; m[k] <= 0 {
			delete(m, k)
		}
	}
	bump(c.ByIP, limitCanonicalIP(s.IP))
	if s.App != "" {
		bump(c.ByApp, s.App)
	}
}

// AdmitCounts is Admit against counts of the other live sessions (s not
// among them).
func (r LimitRules) AdmitCounts(c SessionCounts, s SessionInfo) error {
	x := r.limitCompile()
	if x.total > 0 && c.Total >= x.total {
		return &LimitExceededError{Limit: limitNameTotal, Value: x.total}
	}
	g := x.ruleFor(s.App, limitCanonicalIP(s.IP))
	if g.limit <= 0 {
		return nil
	}
	count := c.ByIP[g.key]
	if g.kind == ruleKindApp {
		count = c.ByApp[g.key]
	}
	if count >= g.limit {
		return &LimitExceededError{Limit: g.name(), Value: g.limit}
	}
	return nil
}

// WithinCounts reports, from the counts of the live sessions alone, that
// no session is in excess (Excess would return none), without the O(n
// log n) pass of Excess over every session: true only when the total is
// within CountLimit and every client IP's and app's count is within the
// tightest limit that could govern its sessions (a session is governed by
// exactly one rule, so a rule's count never exceeds its IP's or app's).
// False means there may be excess: call Excess.
func (r LimitRules) WithinCounts(c SessionCounts) bool {
	x := r.limitCompile()
	if x.total > 0 && c.Total > x.total {
		return false
	}
	for ip, n := range c.ByIP {
		limit, ok := x.ip[ip]
		if !ok {
			limit = x.ipDefault
		}
		if limit > 0 && n > limit {
			return false
		}
	}
	for app, n := range c.ByApp {
		if limit := x.app[app]; limit > 0 && n > limit {
			return false
		}
	}
	return true
}

// Excess returns the sessions that must be asked to reconnect elsewhere so
// that every remaining session satisfies the limits again (that is, each
// remaining session would pass Admit against the others). Within each
// over-limit per-client rule it picks the newest sessions governed by that
// rule first (largest Created, ties broken by the larger ID); then, while the
// total is still over CountLimit, the newest remaining sessions overall. The
// result is deterministic, ordered newest first, and never contains an input
// element twice. It is nil when nothing must go.
func (r LimitRules) Excess(live []SessionInfo) []SessionInfo {
	if len(live) == 0 {
		return nil
	}
	x := r.limitCompile()
	ips := make([]string, len(live))
	groups := make([]ruleGroup, len(live))
	var active []ruleGroup
	for i, s := range live {
		ips[i] = limitCanonicalIP(s.IP)
		groups[i] = x.ruleFor(s.App, ips[i])
		if groups[i].limit > 0 {
			active = append(active, groups[i])
		}
	}
	slices.SortFunc(active, ruleGroupCompare)
	active = slices.Compact(active)

	order := make([]int, len(live))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return limitNewerFirst(live[a], live[b]) })

	removed := make([]bool, len(live))
	// Removing a session never raises any count, so one pass suffices: a rule
	// satisfied here stays satisfied after later removals.
	for _, g := range active {
		count := 0
		for i, s := range live {
			if !removed[i] && g.matches(s.App, ips[i]) {
				count++
			}
		}
		for _, i := range order {
			if count <= g.limit {
				break
			}
			if !removed[i] && groups[i] == g {
				removed[i] = true
				count--
			}
		}
	}
	if x.total > 0 {
		count := 0
		for _, rm := range removed {
			if !rm {
				count++
			}
		}
		for _, i := range order {
			if count <= x.total {
				break
			}
			if !removed[i] {
				removed[i] = true
				count--
			}
		}
	}
	var out []SessionInfo
	for _, i := range order {
		if removed[i] {
			out = append(out, live[i])
		}
	}
	return out
}

// limitNewerFirst orders sessions newest first: larger Created, then larger ID.
func limitNewerFirst(a, b SessionInfo) int {
	if c := b.Created.Compare(a.Created); c != 0 {
		return c
	}
	return strings.Compare(b.ID, a.ID)
}

// limitCanonicalIP normalises a client IP so that rule keys and session IPs
// compare equal: IPv4-mapped IPv6 addresses become IPv4, IPv6 is shortened.
// A host:port is reduced to the host. Anything else is returned trimmed.
func limitCanonicalIP(s string) string {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().String()
	}
	return s
}

// limitIndex is LimitRules prepared for lookups.
type limitIndex struct {
	total     int
	ipDefault int
	ip        map[string]int // canonical IP -> limit
	app       map[string]int
}

func (r LimitRules) limitCompile() limitIndex {
	x := limitIndex{total: r.CountLimit, ipDefault: r.CountLimitPerClientIPDefault, app: r.CountLimitPerClientApp}
	if len(r.CountLimitPerClientIP) > 0 {
		x.ip = make(map[string]int, len(r.CountLimitPerClientIP))
		// Sorted so that keys equal after normalisation (rejected by
		// Validate, possible in a literal) resolve deterministically.
		for _, k := range slices.Sorted(maps.Keys(r.CountLimitPerClientIP)) {
			c := limitCanonicalIP(k)
			if _, dup := x.ip[c]; !dup {
				x.ip[c] = r.CountLimitPerClientIP[k]
			}
		}
	}
	return x
}

const (
	ruleKindIP      = iota // an entry in CountLimitPerClientIP
	ruleKindApp            // an entry in CountLimitPerClientApp
	ruleKindDefault        // CountLimitPerClientIPDefault for one IP
)

// ruleGroup is the per-client rule governing a session. Sessions governed by
// equal ruleGroups share one limit.
type ruleGroup struct {
	kind  int
	key   string // canonical IP, or app label
	limit int    // <= 0: unlimited
}

func (x limitIndex) ruleFor(app, canonicalIP string) ruleGroup {
	if v, ok := x.ip[canonicalIP]; ok {
		return ruleGroup{kind: ruleKindIP, key: canonicalIP, limit: v}
	}
	if app != "" {
		if v, ok := x.app[app]; ok {
			return ruleGroup{kind: ruleKindApp, key: app, limit: v}
		}
	}
	return ruleGroup{kind: ruleKindDefault, key: canonicalIP, limit: x.ipDefault}
}

// matches reports whether a session counts against g's limit.
func (g ruleGroup) matches(app, canonicalIP string) bool {
	if g.kind == ruleKindApp {
		return app == g.key
	}
	return canonicalIP == g.key
}

func (g ruleGroup) name() string {
	switch g.kind {
	case ruleKindIP:
		return limitNameIP + "[" + g.key + "]"
	case ruleKindApp:
		return limitNameApp + "[" + g.key + "]"
	default:
		return limitNameIPDefault
	}
}

func ruleGroupCompare(a, b ruleGroup) int {
	if a.kind != b.kind {
		return a.kind - b.kind
	}
	return strings.Compare(a.key, b.key)
}

// limitRulesEqual reports whether two rule sets impose the same limits
// (nil and empty maps are equal).
func limitRulesEqual(a, b LimitRules) bool {
	return a.CountLimit == b.CountLimit &&
		a.CountLimitPerClientIPDefault == b.CountLimitPerClientIPDefault &&
		maps.Equal(a.CountLimitPerClientIP, b.CountLimitPerClientIP) &&
		maps.Equal(a.CountLimitPerClientApp, b.CountLimitPerClientApp)
}

// limitRacyWindow: a file whose mtime is this close to (or after) our last
// read of it is re-hashed on every poll even when its stat looks unchanged,
// because file system timestamps are coarse and a quick same-size rewrite can
// keep the old mtime.
const limitRacyWindow = 2 * time.Second

// limitStat is what Run compares between polls.
type limitStat struct {
	modTime time.Time
	size    int64
}

func (a limitStat) equal(b limitStat) bool {
	return a.size == b.size && a.modTime.Equal(b.modTime)
}

// LimitWatcher holds the current LimitRules, loaded from a file, and reloads
// them when the file changes. Rules is safe for concurrent use.
type LimitWatcher struct {
	path   string
	logger *slog.Logger
	rules  atomic.Pointer[LimitRules]

	mu         sync.Mutex // guards the fields below; serialises reloads
	stat       limitStat  // stat at the last read
	statOK     bool
	readAt     time.Time // when the file was last read
	hash       [sha256.Size]byte
	hashOK     bool
	unreadable bool // a "cannot read" warning has been logged since the last good read
}

// NewLimitWatcher loads the rules from path. With path "" the rules are
// always unlimited. An error loading the file (missing, unreadable, invalid)
// is returned: a bad file at start-up is fatal. A nil logger means
// slog.Default().
func NewLimitWatcher(path string, logger *slog.Logger) (*LimitWatcher, error) {
	if logger == nil {
		logger = slog.Default()
	}
	w := &LimitWatcher{path: path, logger: logger}
	w.rules.Store(&LimitRules{})
	if path == "" {
		return w, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st, data, err := w.limitRead()
	if err != nil {
		return nil, err
	}
	r, err := ParseLimitRules(data)
	if err != nil {
		return nil, fmt.Errorf("limits file %s: %w", path, err)
	}
	w.limitRecord(st, data)
	w.rules.Store(&r)
	logger.Info("connection limits loaded", limitLogAttrs(path, r)...)
	return w, nil
}

// Rules returns the current rules (unlimited for a nil watcher). The maps are
// shared: do not modify them.
func (w *LimitWatcher) Rules() LimitRules {
	if w == nil {
		return LimitRules{}
	}
	return *w.rules.Load()
}

// Reload re-reads the file now. On a read or parse error (including a missing
// file) the old rules are kept, a warning is logged and the error returned.
// changed reports whether the rules now in effect differ from the previous
// ones. With path "" it does nothing.
func (w *LimitWatcher) Reload() (changed bool, err error) {
	if w.path == "" {
		return false, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st, data, err := w.limitRead()
	if err != nil {
		w.logger.Warn("cannot read limits file; keeping current connection limits", "path", w.path, "err", err)
		w.unreadable = true
		return false, err
	}
	w.limitRecord(st, data)
	return w.limitApply(data)
}

// Run polls the file every interval (stat: mtime and size, then a content
// hash) and reloads it when it changed, until ctx is done. Polling rather
// than file notifications copes with editors and config managers that
// replace the file by renaming. Errors are logged, never fatal: the last good
// rules stay in effect.
func (w *LimitWatcher) Run(ctx context.Context, interval time.Duration) {
	if w.path == "" {
		<-ctx.Done()
		return
	}
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.limitPoll()
		}
	}
}

func (w *LimitWatcher) limitPoll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	fi, err := os.Stat(w.path)
	if err != nil {
		if !w.unreadable {
			w.logger.Warn("cannot stat limits file; keeping current connection limits", "path", w.path, "err", err)
			w.unreadable = true
		}
		w.statOK = false
		return
	}
	st := limitStat{modTime: fi.ModTime(), size: fi.Size()}
	racy := w.readAt.Sub(st.modTime) < limitRacyWindow
	if w.statOK && st.equal(w.stat) && !racy && !w.unreadable {
		return
	}
	st, data, err := w.limitRead()
	if err != nil {
		if !w.unreadable {
			w.logger.Warn("cannot read limits file; keeping current connection limits", "path", w.path, "err", err)
			w.unreadable = true
		}
		return
	}
	if w.unreadable {
		w.logger.Info("limits file readable again", "path", w.path)
	}
	sum := sha256.Sum256(data)
	same := w.hashOK && sum == w.hash
	w.limitRecord(st, data)
	if same {
		return
	}
	_, _ = w.limitApply(data) // errors are logged by limitApply
}

// limitRead stats then reads the file. The stat is taken first so that a
// change racing with the read shows up as a different stat on the next poll.
// Callers hold w.mu.
func (w *LimitWatcher) limitRead() (limitStat, []byte, error) {
	now := time.Now()
	fi, err := os.Stat(w.path)
	if err != nil {
		return limitStat{}, nil, fmt.Errorf("limits file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return limitStat{}, nil, fmt.Errorf("limits file %s: not a regular file", w.path)
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		return limitStat{}, nil, fmt.Errorf("limits file: %w", err)
	}
	w.readAt = now
	return limitStat{modTime: fi.ModTime(), size: fi.Size()}, data, nil
}

// limitRecord remembers what was read. Callers hold w.mu.
func (w *LimitWatcher) limitRecord(st limitStat, data []byte) {
	w.stat, w.statOK = st, true
	w.hash, w.hashOK = sha256.Sum256(data), true
	w.unreadable = false
}

// limitApply parses data and installs the rules. Callers hold w.mu.
func (w *LimitWatcher) limitApply(data []byte) (bool, error) {
	r, err := ParseLimitRules(data)
	if err != nil {
		w.logger.Warn("invalid limits file; keeping current connection limits", "path", w.path, "err", err)
		return false, fmt.Errorf("limits file %s: %w", w.path, err)
	}
	old := w.rules.Load()
	if limitRulesEqual(*old, r) {
		return false, nil
	}
	w.rules.Store(&r)
	w.logger.Info("connection limits reloaded", limitLogAttrs(w.path, r)...)
	return true, nil
}

func limitLogAttrs(path string, r LimitRules) []any {
	return []any{
		"path", path,
		limitNameTotal, r.CountLimit,
		limitNameIPDefault, r.CountLimitPerClientIPDefault,
		"ipRules", len(r.CountLimitPerClientIP),
		"appRules", len(r.CountLimitPerClientApp),
	}
}
