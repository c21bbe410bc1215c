package h2relay

import (
	"testing"
	"time"
)

// TestStreamTimersHeap: streams scheduled, moved and taken out keep the
// heap ordered by wake time with their indexes right, and the timer is set
// for the earliest (it is never moved later: firing early only re-arms).
func TestStreamTimersHeap(t *testing.T) {
	var ts streamTimers
	defer ts.stop()
	base := mono() + int64(time.Hour)
	sts := make([]*relayStream, 6)
	for i := range sts {
		sts[i] = &relayStream{id: uint32(2*i + 1)}
	}
	at := []int64{50, 10, 40, 30, 20, 60}
	for i, st := range sts {
		ts.schedule(st, base+at[i])
	}
	if ts.armed != base+10 {
		t.Fatalf("armed %d, want the earliest %d", ts.armed-base, 10)
	}
	ts.unschedule(sts[1])               // the earliest
	ts.schedule(sts[5], base+5)         // moved earlier: the timer follows
	ts.schedule(sts[3], base+70)        // moved later
	ts.unschedule(&relayStream{id: 99}) // never scheduled: no-op
	if ts.armed != base+5 {
		t.Fatalf("armed %d, want %d", ts.armed-base, 5)
	}
	check := func() {
		t.Helper()
		for i, st := range ts.h {
			if st.hidx != i+1 {
				t.Fatalf("stream %d at %d has hidx %d", st.id, i, st.hidx)
			}
			for _, c := range []int{2*i + 1, 2*i + 2} {
				if c < len(ts.h) && ts.h[c].wakeAt < st.wakeAt {
					t.Fatalf("heap order broken at %d", i)
				}
			}
		}
	}
	check()
	if sts[1].hidx != 0 {
		t.Fatal("an unscheduled stream keeps its index")
	}
	var order []uint32
	for len(ts.h) > 0 {
		st := ts.h[0]
		ts.unschedule(st)
		check()
		order = append(order, st.id)
	}
	want := []uint32{11, 9, 5, 1, 7} // 5, 20, 40, 50, 70
	for i := range want {
		if i >= len(order) || order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
}
