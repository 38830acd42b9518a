package compare

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux ABI).
const userHZ = 100

// procCPU returns the user+system CPU time the process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// the fields after it start at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var ticks int64
	for _, x := range f[11:13] {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// selfCPU returns the CPU time this process (the load generator) has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPU is the CPU time used over the timed windows of a row's rounds: by
// the system's server processes and by the load generator.
type CPU struct {
	Server, Generator time.Duration
	// Ops are the operations in those windows.
	Ops int64
	// Err is the first failure to read a process' times (the figures are
	// then left out).
	Err string
}

// PerOp returns server and generator CPU per operation.
func (c CPU) PerOp() (server, generator time.Duration) {
	if c.Ops == 0 || c.Err != "" {
		return 0, 0
	}
	return c.Server / time.Duration(c.Ops), c.Generator / time.Duration(c.Ops)
}

// cpuMeter reads the CPU of a set of processes and of the generator at
// the opening and closing of a load window.
type cpuMeter struct {
	pids             []int
	server0, gen0    time.Duration
	server, gen      time.Duration
	err              error
	opened, finished bool
}

func (m *cpuMeter) read() (server time.Duration) {
	for _, pid := range m.pids {
		t, err := procCPU(pid)
		if err != nil && m.err == nil {
			m.err = err
		}
		server += t
	}
	return server
}

// window is the load.WithWindow hook.
func (m *cpuMeter) window(start bool) {
	if start {
		m.server0, m.gen0, m.opened = m.read(), selfCPU(), true
		return
	}
	if m.opened {
		m.server, m.gen, m.finished = m.read()-m.server0, selfCPU()-m.gen0, true
	}
}

// add adds the window's figures (if it ran) to c.
func (m *cpuMeter) add(c *CPU, ops int64) {
	if !m.finished {
		return
	}
	if m.err != nil && c.Err == "" {
		c.Err = m.err.Error()
	}
	c.Server += m.server
	c.Generator += m.gen
	c.Ops += ops
}

// Memory is the resident memory of a system's server processes, summed,
// read from /proc at the end of a run.
type Memory struct {
	// Peak is the sum of each process' peak resident set (VmHWM); RSS the
	// sum of their resident sets then (VmRSS). Bytes.
	Peak, RSS uint64
	// Err is the first failure to read a process' figures (they are then
	// left out).
	Err string
}

// procMemory reads the peak and current resident set of the processes.
func procMemory(pids []int) Memory {
	var m Memory
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return Memory{Err: err.Error()}
		}
		var found int
		for _, line := range strings.Split(string(b), "\n") {
			key, val, ok := strings.Cut(line, ":")
			if !ok || key != "VmHWM" && key != "VmRSS" {
				continue
			}
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
			if err != nil {
				return Memory{Err: fmt.Sprintf("/proc/%d/status %s: %v", pid, key, err)}
			}
			if key == "VmHWM" {
				m.Peak += kb << 10
			} else {
				m.RSS += kb << 10
			}
			found++
		}
		if found != 2 {
			return Memory{Err: fmt.Sprintf("/proc/%d/status: no VmHWM and VmRSS", pid)}
		}
	}
	return m
}
