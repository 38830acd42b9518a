// Package rpc is Regent's gRPC front: the Registry service (the Session
// stream and the unary calls), the session manager that keeps sessions alive
// or ends them (probes, connection limits, draining), and the single table
// that turns domain errors into gRPC status codes. Handlers are thin:
// validate, call the core, map the error.
package rpc
