package testenv

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test of this package leaves a goroutine behind
// (a process waiter, an HTTP connection). Shared by every file's tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
