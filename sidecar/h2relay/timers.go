package h2relay

import (
	"container/heap"
	"sync"
	"time"
)

// epoch is the origin of mono: the relay's clock is monotonic nanoseconds
// since it, read without the wall clock time.Now also reads.
var epoch = time.Now()

func mono() int64 { return int64(time.Since(epoch)) }

// streamTimers wakes a downstream connection's streams at their deadline
// or idle check with one timer for the connection, not one or two per
// stream. A stream is in the heap at most once, at the earlier of the two;
// finishing a stream takes it out, and the timer, set for the earliest, is
// not moved for that (firing early only re-arms it).
type streamTimers struct {
	mu      sync.Mutex
	h       []*relayStream // min-heap by wakeAt; relayStream.hidx is index+1
	t       *time.Timer
	armed   int64 // when the timer fires (mono; 0: not set)
	stopped bool
}

func (ts *streamTimers) Len() int           { return len(ts.h) }
func (ts *streamTimers) Less(i, j int) bool { return ts.h[i].wakeAt < ts.h[j].wakeAt }
func (ts *streamTimers) Swap(i, j int) {
	ts.h[i], ts.h[j] = ts.h[j], ts.h[i]
	ts.h[i].hidx, ts.h[j].hidx = i+1, j+1
}
func (ts *streamTimers) Push(x any) {
	st := x.(*relayStream)
	ts.h = append(ts.h, st)
	st.hidx = len(ts.h)
}
func (ts *streamTimers) Pop() any {
	n := len(ts.h) - 1
	st := ts.h[n]
	ts.h[n] = nil
	ts.h = ts.h[:n]
	st.hidx = 0
	return st
}

// schedule wakes st (its wake method) at mono time at.
func (ts *streamTimers) schedule(st *relayStream, at int64) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.stopped {
		return
	}
	st.wakeAt = at
	if st.hidx > 0 {
		heap.Fix(ts, st.hidx-1)
	} else {
		heap.Push(ts, st)
	}
	if ts.armed == 0 || at < ts.armed {
		ts.armed = at
		d := time.Duration(at - mono())
		if ts.t == nil {
			ts.t = time.AfterFunc(d, ts.run)
		} else {
			ts.t.Reset(d)
		}
	}
}

// unschedule takes st out.
func (ts *streamTimers) unschedule(st *relayStream) {
	ts.mu.Lock()
	if st.hidx > 0 {
		heap.Remove(ts, st.hidx-1)
	}
	ts.mu.Unlock()
}

// run wakes the streams that are due and re-arms for the next.
func (ts *streamTimers) run() {
	ts.mu.Lock()
	if ts.stopped {
		ts.mu.Unlock()
		return
	}
	now := mono()
	ts.armed = 0
	var due []*relayStream
	for len(ts.h) > 0 && ts.h[0].wakeAt <= now {
		due = append(due, heap.Pop(ts).(*relayStream))
	}
	if len(ts.h) > 0 {
		ts.armed = ts.h[0].wakeAt
		ts.t.Reset(time.Duration(ts.armed - now))
	}
	ts.mu.Unlock()
	for _, st := range due {
		st.wake()
	}
}

// stop ends the timer (the connection is over).
func (ts *streamTimers) stop() {
	ts.mu.Lock()
	ts.stopped = true
	if ts.t != nil {
		ts.t.Stop()
	}
	for _, st := range ts.h {
		st.hidx = 0
	}
	ts.h = nil
	ts.mu.Unlock()
}
