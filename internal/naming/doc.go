// Package naming holds Regent's data model (services, instances, service
// metadata), the validation rules every entry point applies, and the pure
// query logic (filters and the protection threshold) shared by queries and
// pushes. It has no I/O and no goroutines; ephemeral, persistent, storage and
// rpc all build on it.
package naming
