package persistent

import (
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

// BenchmarkFSMApplyBatch: the FSM's cost of one Raft batch of 20 register
// entries (the batch size measured on a leader under 64 writers), on a
// state opened as the daemon opens it. ns/op is per batch.
func BenchmarkFSMApplyBatch(b *testing.B) {
	db, err := OpenState(filepath.Join(b.TempDir(), "state.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	fsm := NewFSM(db, nil)
	const per = 20
	var index uint64
	n := 0
	batch := make([]*raft.Log, per)
	for b.Loop() {
		for j := range batch {
			n++
			in := tinst(n)
			in.IP = "10." + itoa(n>>16&255) + "." + itoa(n>>8&255) + "." + itoa(n&255)
			data, err := Command{Op: OpRegister, Key: naming.ServiceKey{Service: "svc-" + itoa(n%16)}, Instances: []naming.Instance{in}}.Encode()
			if err != nil {
				b.Fatal(err)
			}
			index++
			batch[j] = &raft.Log{Index: index, Type: raft.LogCommand, Data: data}
		}
		for _, r := range fsm.ApplyBatch(batch) {
			if r.(applyResult).Err != nil {
				b.Fatal(r.(applyResult).Err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*per), "ns/entry")
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}
