package testenv

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// endTB records how a test ended: Skip and Fatalf end the goroutine as the
// real ones do, so nothing after them runs.
type endTB struct {
	testing.TB
	skipped, failed string
}

func (e *endTB) Helper() {}
func (e *endTB) Skip(args ...any) {
	e.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}
func (e *endTB) Fatalf(format string, args ...any) {
	e.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestRequireOrSkip(t *testing.T) {
	for _, tc := range []struct {
		env      string
		wantFail bool
	}{
		{"", false},
		{"0", false},
		{"1", true},
		{"yes", true},
	} {
		t.Run("SIDEMESH_REQUIRE_TOOLS="+tc.env, func(t *testing.T) {
			t.Setenv(RequireToolsEnv, tc.env)
			e := &endTB{TB: t}
			returned := false
			done := make(chan struct{})
			go func() {
				defer close(done)
				RequireOrSkip(e, "frobnicator is not installed")
				returned = true
			}()
			<-done
			switch {
			case returned:
				t.Fatal("RequireOrSkip returned; it must end the test")
			case tc.wantFail && (e.failed == "" || e.skipped != ""):
				t.Fatalf("failed %q, skipped %q; want a failure", e.failed, e.skipped)
			case !tc.wantFail && (e.skipped == "" || e.failed != ""):
				t.Fatalf("failed %q, skipped %q; want a skip", e.failed, e.skipped)
			}
			msg := e.failed + e.skipped
			if !strings.Contains(msg, "frobnicator is not installed") {
				t.Errorf("message %q does not give the reason", msg)
			}
			if tc.wantFail && !strings.Contains(msg, RequireToolsEnv) {
				t.Errorf("failure %q does not say that %s made it one", msg, RequireToolsEnv)
			}
		})
	}
}
