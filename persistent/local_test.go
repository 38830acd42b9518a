package persistent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/regent-registry/regent/internal/naming"
	"github.com/regent-registry/regent/storage"
)

var key = naming.ServiceKey{Namespace: "public", Group: "DEFAULT_GROUP", Service: "orders"}

func inst(ip string) naming.Instance {
	return naming.Instance{IP: ip, Port: 80, Cluster: "DEFAULT", Weight: 1, Healthy: true, Enabled: true, Ephemeral: true}
}

func TestLocalWritesNotifyAndSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := storage.Open(path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLocal(db)
	var seen []naming.ServiceKey
	l.SetObserver(func(k []naming.ServiceKey) { seen = append(seen, k...) })
	ctx := context.Background()

	r1, err := l.Register(ctx, key, []naming.Instance{inst("10.0.0.1"), inst("10.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 {
		t.Fatalf("observer called %d times, want 1", len(seen))
	}
	// Registering the same again changes nothing and notifies nobody.
	r2, err := l.Register(ctx, key, []naming.Instance{inst("10.0.0.1")})
	if err != nil || r2 != r1 || len(seen) != 1 {
		t.Fatalf("idempotent register: rev %d->%d err %v notifications %d", r1, r2, err, len(seen))
	}
	r3, err := l.Deregister(ctx, key, naming.InstanceID{IP: "10.0.0.2", Port: 80, Cluster: "DEFAULT"})
	if err != nil || r3 <= r1 {
		t.Fatalf("deregister: rev %d err %v", r3, err)
	}
	if _, err := l.Deregister(ctx, key, naming.InstanceID{IP: "10.0.0.2", Port: 80, Cluster: "DEFAULT"}); err != nil {
		t.Fatalf("second deregister: %v", err)
	}
	if _, err := l.UpdateMeta(ctx, key, naming.ServiceMeta{ProtectThreshold: 0.3}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = storage.Open(path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ps, err := NewLocal(db).Service(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps.Instances) != 1 || ps.Instances[0].IP != "10.0.0.1" || ps.Instances[0].Ephemeral {
		t.Fatalf("after reopen: %+v", ps.Instances)
	}
	if !ps.HasMeta || ps.Meta.ProtectThreshold != 0.3 || ps.Revision <= r3 {
		t.Fatalf("after reopen: meta %+v has %v rev %d", ps.Meta, ps.HasMeta, ps.Revision)
	}
	keys, err := NewLocal(db).ServiceKeys("public", "", "", 10)
	if err != nil || len(keys) != 1 || keys[0] != key {
		t.Fatalf("service keys %v %v", keys, err)
	}
}

func TestLocalRefusesAfterCloseAndCancelledContext(t *testing.T) {
	l := NewLocal(storage.OpenTest(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Register(ctx, key, []naming.Instance{inst("10.0.0.1")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	l.Close()
	if _, err := l.Register(context.Background(), key, []naming.Instance{inst("10.0.0.1")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if ps, _ := l.Service(key); len(ps.Instances) != 0 {
		t.Fatalf("a refused write was stored: %+v", ps)
	}
}
