package sidecar

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// listener, relay, pool, detector and checker a sidecar starts must end
// with Shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
