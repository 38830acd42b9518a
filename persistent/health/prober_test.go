package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/regent-registry/regent/internal/naming"
)

// tcpListener is a loopback listener that accepts and closes connections
// until Close.
type tcpListener struct {
	ip   string
	port int
	ln   net.Listener
	once sync.Once
	done chan struct{}
}

func listenTCP(t *testing.T) *tcpListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	a := ln.Addr().(*net.TCPAddr)
	l := &tcpListener{ip: a.IP.String(), port: a.Port, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	t.Cleanup(l.Close)
	return l
}

// Close stops the listener and waits for its accept loop.
func (l *tcpListener) Close() {
	l.once.Do(func() { _ = l.ln.Close() })
	<-l.done
}

func (l *tcpListener) instance(healthy bool) naming.Instance {
	return instance(l.ip, l.port, healthy)
}

func hostPort(t *testing.T, rawURL string) (string, int) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), port
}

func TestNetProberTCP(t *testing.T) {
	p := NewNetProber(2 * time.Second)
	l := listenTCP(t)
	check := naming.HealthCheck{Type: naming.CheckTCP}
	if err := p.Probe(context.Background(), check, l.ip, l.port); err != nil {
		t.Fatalf("probe of a listening port: %v", err)
	}
	l.Close()
	err := p.Probe(context.Background(), check, l.ip, l.port)
	if err == nil {
		t.Fatal("probe of a closed port succeeded")
	}
	t.Logf("closed port: %v", err)
}

func TestNetProberHTTP(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/health", http.StatusFound) })
	ok := httptest.NewServer(mux)
	defer ok.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer down.Close()

	p := &NetProber{} // the zero value works
	okIP, okPort := hostPort(t, ok.URL)
	downIP, downPort := hostPort(t, down.URL)
	httpCheck := func(path string, status int) naming.HealthCheck {
		return naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: path, ExpectedStatus: status}
	}
	for _, tc := range []struct {
		name     string
		check    naming.HealthCheck
		ip       string
		port     int
		wantErr  bool
		isStatus bool
	}{
		{"200 as expected", httpCheck("/health", 200), okIP, okPort, false, false},
		{"defaults expect 200", httpCheck("/health", 0), okIP, okPort, false, false},
		{"path without slash", httpCheck("health", 200), okIP, okPort, false, false},
		{"503, want 200", httpCheck("/", 200), downIP, downPort, true, true},
		{"503 expected", httpCheck("/", 503), downIP, downPort, false, false},
		{"404 on another path", httpCheck("/nope", 200), okIP, okPort, true, true},
		{"204 expected", httpCheck("/empty", 204), okIP, okPort, false, false},
		{"200, want 204", httpCheck("/health", 204), okIP, okPort, true, true},
		{"redirect not followed", httpCheck("/moved", 200), okIP, okPort, true, true},
		{"redirect expected", httpCheck("/moved", 302), okIP, okPort, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Probe(context.Background(), tc.check, tc.ip, tc.port)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Probe = %v, want error %v", err, tc.wantErr)
			}
			if tc.isStatus && !errors.Is(err, ErrUnexpectedStatus) {
				t.Fatalf("Probe = %v, want ErrUnexpectedStatus", err)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(paths) == 0 || paths[0] != "GET /health" {
		t.Fatalf("server saw %v, want GET /health first", paths)
	}

	// A server that is gone fails the check.
	down.Close()
	if err := p.Probe(context.Background(), httpCheck("/", 503), downIP, downPort); err == nil {
		t.Fatal("probe of a closed HTTP server succeeded")
	}
}

func TestNetProberHTTPHonoursTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: unblocks the handler
	ip, port := hostPort(t, srv.URL)
	check := naming.HealthCheck{Type: naming.CheckHTTP, HTTPPath: "/"}

	err := NewNetProber(20*time.Millisecond).Probe(context.Background(), check, ip, port)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Probe of a hung server with a 20ms Timeout = %v, want DeadlineExceeded", err)
	}
	// The caller's deadline counts too.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = NewNetProber(time.Hour).Probe(ctx, check, ip, port)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Probe of a hung server with a 20ms context = %v, want DeadlineExceeded", err)
	}
}

func TestNetProberOtherTypes(t *testing.T) {
	p := NewNetProber(0)
	if err := p.Probe(context.Background(), naming.HealthCheck{Type: naming.CheckNone}, "192.0.2.1", 1); err != nil {
		t.Errorf("CheckNone: %v", err)
	}
	err := p.Probe(context.Background(), naming.HealthCheck{Type: 42}, "192.0.2.1", 1)
	if !errors.Is(err, ErrUnknownCheckType) {
		t.Errorf("unknown type: %v, want ErrUnknownCheckType", err)
	}
}
