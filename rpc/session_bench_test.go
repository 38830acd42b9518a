package rpc

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	regentv1 "github.com/regent-registry/regent/proto/regent/v1"
)

// BenchmarkSessionOpen: what a new session holding one instance costs, the
// unit of the ephemeral workload of bench-compare (a session per
// instance). Each op opens a Session stream, says Hello, registers one
// instance and waits for its ack; the sessions stay open to the end, as
// the instances' leases would. Client and server share the process
// (bufconn), so ns/op and B/op are both sides'; goroutines/session is
// counted after the sessions are open, both sides included. Beside it,
// Ping on an open session (the round trip alone).
func BenchmarkSessionOpen(b *testing.B) {
	b.Run("open+register", func(b *testing.B) {
		e := newEnv(b, envOptions{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		base := runtime.NumGoroutine()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			st, err := e.client.Session(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := st.Send(helloMsg(fmt.Sprintf("bench-%d", i), nil)); err != nil {
				b.Fatal(err)
			}
			if m, err := st.Recv(); err != nil || m.GetHelloReply() == nil {
				b.Fatalf("no HelloReply: %v %v", m, err)
			}
			reg := registerMsg("bench", inst(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), 80))
			reg.RequestId = 1
			if err := st.Send(reg); err != nil {
				b.Fatal(err)
			}
			for {
				m, err := st.Recv()
				if err != nil {
					b.Fatal(err)
				}
				if a := m.GetAck(); a != nil {
					if a.GetCode() != 0 {
						b.Fatalf("register refused: %v", a)
					}
					break
				}
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(runtime.NumGoroutine()-base)/float64(b.N), "goroutines/session")
		cancel()
		waitFor(b, "sessions closed", func() bool { return e.srv.Sessions().Count() == 0 })
	})
	b.Run("ping", func(b *testing.B) {
		e := newEnv(b, envOptions{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := e.client.Session(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Send(helloMsg("bench-ping", nil)); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := st.Send(&regentv1.ClientMessage{RequestId: uint64(i + 1), Body: &regentv1.ClientMessage_Ping{Ping: &regentv1.Ping{}}}); err != nil {
				b.Fatal(err)
			}
			if m, err := st.Recv(); err != nil || m.GetAck() == nil {
				b.Fatalf("no ack: %v %v", m, err)
			}
		}
	})
}
