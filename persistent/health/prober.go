package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// Prober runs one check against one instance; a nil error means healthy.
//
// Probe must honour ctx: the Checker gives every call a deadline (the
// smaller of Config.ProbeTimeout and the service's interval) and cancels it
// when Run stops. It is called from many goroutines at once.
type Prober interface {
	Probe(ctx context.Context, check naming.HealthCheck, ip string, port int) error
}

// defaultProbeTimeout bounds a NetProber probe whose context has no earlier
// deadline.
const defaultProbeTimeout = 2 * time.Second

// maxDrain is how much of an HTTP check's response body is read (and thrown
// away) before the connection is closed.
const maxDrain = 4 << 10

var _ Prober = (*NetProber)(nil)

// NetProber is the real Prober. A TCP check succeeds when a connection to
// ip:port is established (it is closed at once). An HTTP check sends
// GET http://ip:port{HTTPPath} and succeeds when the response status equals
// ExpectedStatus; redirects are not followed, so a 302 is compared as 302.
// CheckNone always succeeds (the Checker never probes it). The zero value is
// ready to use; it is safe for concurrent use.
type NetProber struct {
	// Timeout bounds every probe whose context has no earlier deadline;
	// zero means 2s.
	Timeout time.Duration

	once   sync.Once
	client *http.Client
}

// NewNetProber returns a NetProber whose probes last at most timeout (zero
// means 2s).
func NewNetProber(timeout time.Duration) *NetProber {
	return &NetProber{Timeout: timeout}
}

// Probe runs check against ip:port.
func (p *NetProber) Probe(ctx context.Context, check naming.HealthCheck, ip string, port int) error {
	check = check.WithDefaults()
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = defaultProbeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	switch check.Type {
	case naming.CheckTCP:
		return p.probeTCP(ctx, addr)
	case naming.CheckHTTP:
		return p.probeHTTP(ctx, addr, check)
	case naming.CheckNone:
		return nil
	default:
		return fmt.Errorf("%w: %d", ErrUnknownCheckType, check.Type)
	}
}

func (p *NetProber) probeTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("health: tcp %s: %w", addr, err)
	}
	_ = conn.Close()
	return nil
}

func (p *NetProber) probeHTTP(ctx context.Context, addr string, check naming.HealthCheck) error {
	path := check.HTTPPath
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := "http://" + addr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health: http %s: %w", url, err)
	}
	req.Header.Set("User-Agent", "regent-health-check")
	resp, err := p.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("health: http %s: %w", url, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	_ = resp.Body.Close()
	if resp.StatusCode != check.ExpectedStatus {
		return fmt.Errorf("%w: GET %s: %d, want %d", ErrUnexpectedStatus, url, resp.StatusCode, check.ExpectedStatus)
	}
	return nil
}

// httpClient returns the prober's client, built on first use: no keep-alive
// (a check every few seconds to each of thousands of instances must not
// hold thousands of idle connections), no proxy, no redirects.
func (p *NetProber) httpClient() *http.Client {
	p.once.Do(func() {
		p.client = &http.Client{
			Transport: &http.Transport{
				Proxy:             nil,
				DisableKeepAlives: true,
				DialContext:       (&net.Dialer{}).DialContext,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	})
	return p.client
}
