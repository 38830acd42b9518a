package persistent

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/regent-registry/regent/internal/naming"
)

// BenchmarkFSMApplyBatch: the FSM's cost of one Raft batch of register
// entries, on a state opened as the daemon opens it; ns/entry is the figure.
// "services=16,batch=20" is a small load; "services=64,batch=55" mirrors
// BenchmarkRaftRegisterVsBareRaft at 64 writers (64 services, one writer
// each, adding instances; Raft batches averaged 55 entries there).
func BenchmarkFSMApplyBatch(b *testing.B) {
	for _, tc := range []struct{ services, per int }{{16, 20}, {64, 55}} {
		b.Run(fmt.Sprintf("services=%d,batch=%d", tc.services, tc.per), func(b *testing.B) {
			db, err := OpenState(filepath.Join(b.TempDir(), "state.db"), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			fsm := NewFSM(db, nil)
			var index uint64
			n := 0
			batch := make([]*raft.Log, tc.per)
			for b.Loop() {
				for j := range batch {
					n++
					data, err := Command{Op: OpRegister, Key: benchKey(n % tc.services), Instances: []naming.Instance{benchInstance(n)}}.Encode()
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
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*tc.per), "ns/entry")
		})
	}
}
