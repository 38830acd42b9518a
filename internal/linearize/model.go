// Package linearize holds the porcupine model of Regent's persistent
// instances, shared by the Raft store's linearizability test and the chaos
// suite's checker.
package linearize

import (
	"fmt"
	"slices"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does to one instance.
type Kind uint8

// Operation kinds.
const (
	Register Kind = iota
	Deregister
	Read
)

func (k Kind) String() string {
	switch k {
	case Register:
		return "register"
	case Deregister:
		return "deregister"
	case Read:
		return "read"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Input is one operation on instance number Key. A read's output is a bool
// (whether the instance was listed); a write's output is unused, nil for a
// write that failed (ambiguous).
type Input struct {
	Kind Kind
	Key  int
}

// SetModel models the persistent instances as independent registers
// holding "listed or not", so a history is checked per instance. Register
// and deregister always succeed (both are idempotent); a read must see the
// current state.
var SetModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]int, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return false },
	Step: func(state, input, output any) (bool, any) {
		present := state.(bool)
		switch input.(Input).Kind {
		case Register:
			return true, true
		case Deregister:
			return true, false
		default:
			return output.(bool) == present, present
		}
	},
	Equal: func(a, b any) bool { return a.(bool) == b.(bool) },
	DescribeOperation: func(input, output any) string {
		in := input.(Input)
		if in.Kind == Read {
			return fmt.Sprintf("read(i%d) -> %v", in.Key, output)
		}
		if output == nil {
			return fmt.Sprintf("%s(i%d) -> ? (failed)", in.Kind, in.Key)
		}
		return fmt.Sprintf("%s(i%d)", in.Kind, in.Key)
	},
	DescribeState: func(state any) string {
		if state.(bool) {
			return "listed"
		}
		return "absent"
	},
}
