package testenv

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of this package leaves a goroutine behind
// (a process waiter, an HTTP connection). Shared by every file's tests.
func TestMain(m *testing.M) {
	if url := os.Getenv(podHelperEnv); url != "" { // re-exec'd in a pod
		os.Exit(podHelper(url))
	}
	goleak.VerifyTestMain(m)
}
