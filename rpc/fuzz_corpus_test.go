package rpc

import (
	"os"
	"path/filepath"
	"testing"
)

// checkCorpusFile keeps one checked-in seed of a fuzz target in step with
// the seeds the test builds: with REGENT_WRITE_CORPUS set it (re)writes
// testdata/fuzz/<target>/<name> as content, and it fails when the file is
// missing or differs. content is the file in `go test fuzz v1` form.
func checkCorpusFile(t *testing.T, target, name, content string) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	file := filepath.Join(dir, name)
	if os.Getenv("REGENT_WRITE_CORPUS") != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(file); err != nil || string(got) != content {
		t.Fatalf("corpus file %s is missing or stale (REGENT_WRITE_CORPUS=1 rewrites it): %v", file, err)
	}
}
