package h2relay

import (
	"context"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// relayStream is one downstream stream and its current upstream attempt.
type relayStream struct {
	sc  *serverConn
	id  uint32
	req Request
	// ctx is canceled when the stream is over (abandons a dial); made for
	// the first dial, nil until then.
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	h          Stream
	replayMax  int64
	done       bool  // over: nothing more is relayed
	closed     bool  // h.Close called
	inAttempt  bool  // h.Attempt is running
	deadlineAt int64 // mono time of the stream's deadline (0: none)
	lastActive int64 // mono time of the last frame relayed (StreamIdleTimeout)
	wakeAt     int64 // when the connection's timers wake the stream (under their lock)
	hidx       int   // index+1 in the connection's timer heap (under its lock)

	// request direction (downstream → upstream)
	reqBufs     []*buf // [0:next) sent and kept for a replay, [next:] not sent yet
	next        int
	credited    int   // reqBufs[:credited] were credited to the downstream
	retained    int64 // bytes in reqBufs[:next]
	retain      bool  // keep what is sent for a replay
	lost        bool  // sent data was not kept: no replay
	reqEnded    bool
	reqTrailers []hpack.HeaderField
	reqEndSent  bool
	recvWin     int64 // the downstream's window on this stream
	credit      uint32
	clen        int64 // declared content-length, -1 none
	got         int64

	// the attempt
	n           int
	attemptOpen bool // Attempt gave a Target and End is still due
	cc          *clientConn
	uid         uint32
	tryTimer    *time.Timer
	res         Result
	endRes      Result // what End is given
	hdr         Header // the header Attempt edits (while it runs)
	gotHeader   bool
	committed   bool // a response header went downstream
	respEnded   bool
	upRecvWin   int64
	upCredit    uint32
}

func newRelayStream(sc *serverConn, id uint32, f *http2.MetaHeadersFrame) *relayStream {
	st := &relayStream{sc: sc, id: id, clen: -1, recvWin: int64(sc.cfg.StreamWindow), retain: true}
	st.req = Request{Header: Header(f.Fields), RemoteAddr: sc.nc.RemoteAddr(), Context: sc.ctx, GoAway: sc.goAwayFn}
	for _, hf := range f.RegularFields() {
		if hf.Name == "content-length" {
			st.clen, _ = strconv.ParseInt(hf.Value, 10, 64)
		}
	}
	if f.StreamEnded() {
		st.reqEnded = true
		if st.clen > 0 {
			st.clen = -2 // checked in open: a body was promised and none came
		}
	}
	return st
}

// open asks the handler for the stream's policy and runs the first attempt,
// on the connection's read loop (Handler.Open and a first Attempt do not
// block; a dial goes to a goroutine).
func (st *relayStream) open() {
	if st.clen == -2 {
		st.sc.abortStream(st.id, http2.ErrCodeProtocol)
		return
	}
	h, reply := st.sc.h.Open(&st.req)
	st.mu.Lock()
	st.h = h // closed when the stream ends, answered locally or not
	if reply != nil {
		if !st.done {
			st.replyLocked(reply)
			st.finishLocked(false)
		} else {
			st.closeHandlerLocked()
		}
		st.mu.Unlock()
		return
	}
	if st.done {
		st.closeHandlerLocked()
		st.mu.Unlock()
		return
	}
	st.replayMax = replayLimit(h)
	now := mono()
	if d := h.Deadline(); !d.IsZero() {
		st.deadlineAt = max(now+int64(time.Until(d)), 1)
	}
	st.lastActive = now
	st.armLocked()
	st.mu.Unlock()
	st.runAttempt(0, true)
}

// ReplayLimiter is implemented by a Stream that bounds how much of a
// request is kept for a retry (default 64 KiB).
type ReplayLimiter interface{ ReplayLimit() int64 }

func replayLimit(h Stream) int64 {
	if l, ok := h.(ReplayLimiter); ok {
		return l.ReplayLimit()
	}
	return 64 << 10
}

// runAttempt runs attempt n: the handler's pick, a pooled connection, the
// request header and what the request has so far. inline: it runs on the
// connection's read loop (the first attempt), where it must not block.
func (st *relayStream) runAttempt(n int, inline bool) {
	st.mu.Lock()
	if st.done {
		st.closeHandlerLocked()
		st.mu.Unlock()
		return
	}
	// The attempt's header is a field: a local would escape through the
	// interface call, one more allocation per attempt.
	st.hdr = append(make(Header, 0, len(st.req.Header)+8), st.req.Header...)
	st.inAttempt = true
	st.mu.Unlock()

	t, reply := st.h.Attempt(n, &st.hdr)
	hdr := st.hdr
	st.hdr = nil

	st.mu.Lock()
	st.inAttempt = false
	if reply != nil {
		if !st.done {
			st.replyLocked(reply)
			st.finishLocked(false)
		}
		st.closeHandlerLocked()
		st.mu.Unlock()
		return
	}
	st.n, st.attemptOpen, st.res, st.gotHeader = n, true, Result{}, false
	if st.done {
		st.endAttemptLocked(Result{Err: ErrCanceled, Canceled: true})
		st.closeHandlerLocked()
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	if inline {
		// On the connection's read loop: only a pooled connection with a
		// free stream will do; a dial goes to a goroutine of its own.
		if cc := st.sc.srv.poolFor(t).tryAcquire(t.Addr); cc != nil {
			st.attach(cc, nil, t, hdr)
			return
		}
		go st.connect(t, hdr)
		return
	}
	st.connect(t, hdr)
}

// connect gets a pooled connection for the attempt (dialing one if need
// be) and starts the attempt's upstream stream on it.
func (st *relayStream) connect(t Target, hdr Header) {
	st.mu.Lock()
	if st.cancel == nil {
		st.ctx, st.cancel = context.WithCancel(st.sc.ctx)
		if st.done {
			st.cancel()
		}
	}
	ctx := st.ctx
	st.mu.Unlock()
	cc, err := st.sc.srv.poolFor(t).acquire(ctx, t)
	st.attach(cc, err, t, hdr)
}

// attach starts the attempt's upstream stream on cc (or fails the attempt
// with err).
func (st *relayStream) attach(cc *clientConn, err error, t Target, hdr Header) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		if st.done {
			st.endAttemptLocked(Result{Err: ErrCanceled, Canceled: true})
			st.closeHandlerLocked()
			return
		}
		st.attemptFailedLocked(Result{Err: err, Connect: true})
		return
	}
	if st.done {
		cc.unreserve()
		st.endAttemptLocked(Result{Err: ErrCanceled, Canceled: true})
		st.closeHandlerLocked()
		return
	}
	end := st.reqEnded && len(st.reqBufs) == 0 && st.reqTrailers == nil
	uid, ok := cc.open(st, upstreamFields(hdr), end)
	if !ok {
		st.attemptFailedLocked(Result{Err: ErrConnClosed, Unprocessed: true})
		return
	}
	st.cc, st.uid = cc, uid
	st.next = 0
	st.reqEndSent = end
	st.upRecvWin = int64(st.sc.cfg.StreamWindow)
	st.upCredit = 0
	if t.Timeout > 0 {
		st.tryTimer = time.AfterFunc(t.Timeout, func() { st.attemptTimeout(cc, uid) })
	}
	st.pumpLocked()
}

// upstreamFields drops what must not go upstream: the Host field when
// :authority is there (RFC 9113 §8.3.1).
func upstreamFields(h Header) []hpack.HeaderField {
	if !h.Has(":authority") || !h.Has("host") {
		return h
	}
	h.Del("host")
	return h
}

// pumpLocked sends the request data not yet sent on the current attempt.
func (st *relayStream) pumpLocked() {
	cc := st.cc
	if cc == nil || st.done {
		return
	}
	for st.next < len(st.reqBufs) {
		b := st.reqBufs[st.next]
		// Kept buffers count whole (a peer sending tiny frames must not make
		// the replay hold a buffer per byte).
		if st.retain && st.retained+frameSize > st.replayMax {
			st.dropRetainedLocked()
			continue
		}
		it := item{kind: kData, id: st.uid, b: b}
		if st.next >= st.credited {
			st.credited = st.next + 1
			if st.retain {
				// Kept for a replay (bounded by the replay limit): credit
				// now, as a later attempt may never drain it.
				st.creditDownLocked(uint32(b.n))
			} else {
				it.st, it.toUp = st, true
			}
		}
		if st.retain {
			b.retain()
			st.retained += frameSize
		} else {
			st.reqBufs[st.next] = nil
			st.lost = true
		}
		st.next++
		it.end = st.reqEnded && st.reqTrailers == nil && st.next == len(st.reqBufs)
		if it.end {
			st.reqEndSent = true
		}
		cc.enqueueData(it)
	}
	if !st.retain && st.next > 0 {
		st.reqBufs = st.reqBufs[:0]
		st.credited -= st.next
		st.next = 0
	}
	if st.reqEnded && !st.reqEndSent {
		st.reqEndSent = true
		if st.reqTrailers != nil {
			cc.enqueue(item{kind: kHeaders, id: st.uid, fields: st.reqTrailers, end: true})
		} else {
			cc.enqueue(item{kind: kData, id: st.uid, b: getBuf(nil), end: true})
		}
	}
}

// dropRetainedLocked stops keeping the request for a replay.
func (st *relayStream) dropRetainedLocked() {
	if !st.retain {
		return
	}
	st.retain = false
	if st.next > 0 {
		st.lost = true
		for _, b := range st.reqBufs[:st.next] {
			b.release()
		}
		n := copy(st.reqBufs, st.reqBufs[st.next:])
		clear(st.reqBufs[n:])
		st.reqBufs = st.reqBufs[:n]
		st.credited -= st.next
		st.next = 0
	}
	st.retained = 0
}

func (st *relayStream) replayableLocked() bool { return !st.lost }

// requestEnded reports whether the downstream ended the request.
func (st *relayStream) requestEnded() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.reqEnded
}

// endedNormally reports a stream both sides have ended (its END_STREAM
// may be on the wire before the connection forgets the stream).
func (st *relayStream) endedNormally() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.reqEnded && st.respEnded && st.reqEndSent
}

// creditDownLocked gives the downstream back n bytes of window.
func (st *relayStream) creditDownLocked(n uint32) {
	if st.done || st.reqEnded {
		return
	}
	st.credit += n
	if st.credit >= st.sc.cfg.StreamWindow/4 {
		st.sc.enqueue(item{kind: kWindow, id: st.id, incr: st.credit})
		st.recvWin += int64(st.credit)
		st.credit = 0
	}
}

// drained is the writer's report that n bytes of st's DATA went out: the
// leg they came from gets its window back.
func (st *relayStream) drained(toUp bool, n uint32) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if toUp {
		st.creditDownLocked(n)
		return
	}
	if st.done || st.respEnded || st.cc == nil {
		return
	}
	st.upCredit += n
	if st.upCredit >= st.sc.cfg.StreamWindow/4 {
		st.cc.enqueue(item{kind: kWindow, id: st.uid, incr: st.upCredit})
		st.upRecvWin += int64(st.upCredit)
		st.upCredit = 0
	}
}

// downData takes a downstream DATA frame; non-zero is a stream error.
func (st *relayStream) downData(p []byte, flowLen int, end bool) http2.ErrCode {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.reqEnded {
		return http2.ErrCodeStreamClosed
	}
	st.recvWin -= int64(flowLen)
	if st.recvWin < 0 {
		return http2.ErrCodeFlowControl
	}
	st.got += int64(len(p))
	st.activeLocked()
	if st.clen >= 0 && (st.got > st.clen || (end && st.got != st.clen)) {
		return http2.ErrCodeProtocol
	}
	if pad := flowLen - len(p); pad > 0 {
		st.creditDownLocked(uint32(pad))
	}
	if st.done {
		return 0
	}
	if len(p) > 0 {
		// A small frame joins the last one not sent yet: what the relay
		// holds is bounded by the window in bytes, not in frames.
		if k := len(st.reqBufs); k > st.next {
			last := st.reqBufs[k-1]
			n := copy(last.b[last.n:], p)
			last.n += n
			p = p[n:]
		}
		if len(p) > 0 {
			st.reqBufs = append(st.reqBufs, getBuf(p))
		}
	}
	if end {
		st.reqEnded = true
	}
	st.pumpLocked()
	return 0
}

// downTrailers takes the request's trailers (they end it).
func (st *relayStream) downTrailers(fields []hpack.HeaderField) http2.ErrCode {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.reqEnded {
		return http2.ErrCodeStreamClosed
	}
	if st.clen >= 0 && st.got != st.clen {
		return http2.ErrCodeProtocol
	}
	for _, f := range fields {
		if connectionSpecific(f.Name) {
			return http2.ErrCodeProtocol
		}
	}
	st.reqEnded = true
	st.reqTrailers = fields
	if st.reqTrailers == nil {
		st.reqTrailers = []hpack.HeaderField{}
	}
	st.pumpLocked()
	return 0
}

// downReset ends the stream for the downstream's RST_STREAM (or its
// connection's end, or a protocol error). It reports a reset before any
// response (rapid reset accounting) when counted.
func (st *relayStream) downReset(code http2.ErrCode, counted bool) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return false
	}
	premature := counted && !st.committed
	r := Result{Err: ErrCanceled, Canceled: true, Reset: code}
	if st.attemptOpen {
		st.res.Err, st.res.Canceled, st.res.Reset = r.Err, true, code
		st.detachLocked(http2.ErrCodeCancel)
		st.endAttemptLocked(st.res)
	}
	st.finishLocked(false)
	return premature
}

// upHeaders takes a response header or trailers of the current attempt.
func (st *relayStream) upHeaders(cc *clientConn, uid uint32, f *http2.MetaHeadersFrame) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done || st.cc != cc || st.uid != uid {
		return
	}
	st.activeLocked()
	if st.gotHeader {
		// Trailers.
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			st.res.Err = http2.StreamError{StreamID: uid, Code: http2.ErrCodeProtocol}
			st.resetBothLocked(http2.ErrCodeProtocol, http2.ErrCodeInternal)
			return
		}
		st.res.Trailer = f.Fields
		st.respEnded = true // before the frame can reach the client (endedNormally)
		st.sc.enqueue(item{kind: kHeaders, id: st.id, fields: responseFields(f.Fields), end: true})
		st.maybeFinishLocked()
		return
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		st.res.Err = http2.StreamError{StreamID: uid, Code: http2.ErrCodeProtocol}
		st.detachLocked(http2.ErrCodeProtocol)
		st.attemptFailedLocked(st.res)
		return
	}
	if status < 200 {
		if status != 101 {
			st.sc.enqueue(item{kind: kHeaders, id: st.id, fields: responseFields(f.Fields)})
		}
		return
	}
	st.gotHeader = true
	st.res.Status = status
	st.res.Header = f.RegularFields()
	if st.tryTimer != nil {
		st.tryTimer.Stop()
	}
	if !st.committed {
		if st.h.Retry(st.n, &st.res, st.replayableLocked()) {
			st.res.Retried = true
			st.detachLocked(http2.ErrCodeCancel)
			st.endAttemptLocked(st.res)
			go st.runAttempt(st.n+1, false)
			return
		}
		st.committed = true
		st.dropRetainedLocked()
	}
	if f.StreamEnded() {
		st.respEnded = true // before the frame can reach the client (endedNormally)
	}
	st.sc.enqueue(item{kind: kHeaders, id: st.id, fields: responseFields(f.Fields), end: f.StreamEnded()})
	if f.StreamEnded() {
		st.maybeFinishLocked()
	}
}

// responseFields drops the connection-specific fields of a response.
func responseFields(fs []hpack.HeaderField) []hpack.HeaderField {
	for _, f := range fs {
		if connectionSpecific(f.Name) {
			out := make([]hpack.HeaderField, 0, len(fs))
			for _, f := range fs {
				if !connectionSpecific(f.Name) {
					out = append(out, f)
				}
			}
			return out
		}
	}
	return fs
}

// upData relays a response DATA frame of the current attempt.
func (st *relayStream) upData(cc *clientConn, uid uint32, p []byte, flowLen int, end bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done || st.cc != cc || st.uid != uid {
		return
	}
	st.upRecvWin -= int64(flowLen)
	st.activeLocked()
	if code := http2.ErrCodeProtocol; st.upRecvWin < 0 || !st.committed || st.respEnded {
		if st.upRecvWin < 0 {
			code = http2.ErrCodeFlowControl
		}
		st.res.Err = http2.StreamError{StreamID: uid, Code: code}
		if !st.committed {
			st.detachLocked(code)
			st.attemptFailedLocked(st.res)
			return
		}
		st.resetBothLocked(code, http2.ErrCodeInternal)
		return
	}
	if pad := flowLen - len(p); pad > 0 {
		st.upCredit += uint32(pad)
	}
	if end {
		st.respEnded = true // before the frame can reach the client (endedNormally)
	}
	if len(p) > 0 || end {
		st.sc.enqueueData(item{kind: kData, id: st.id, b: getBuf(p), end: end, st: st})
	}
	if end {
		st.maybeFinishLocked()
	}
}

// upReset takes the upstream's RST_STREAM for the current attempt.
func (st *relayStream) upReset(cc *clientConn, uid uint32, code http2.ErrCode) {
	r := Result{Err: http2.StreamError{StreamID: uid, Code: code}, Reset: code, Unprocessed: code == http2.ErrCodeRefusedStream}
	if code == http2.ErrCodeRefusedStream {
		r.Err = ErrStreamReset
	}
	st.upFailed(cc, uid, r)
}

// upFailed ends the current attempt for a failure of its upstream stream or
// connection.
func (st *relayStream) upFailed(cc *clientConn, uid uint32, r Result) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done || st.cc != cc || st.uid != uid {
		return
	}
	st.cc.forget(uid, noReset)
	st.cc = nil
	if st.committed {
		if st.respEnded {
			return
		}
		st.res.Err, st.res.Reset = r.Err, r.Reset
		code := r.Reset
		if code == 0 || code == noReset {
			code = http2.ErrCodeInternal
		}
		st.sc.rst(st.id, code)
		st.endAttemptLocked(st.res)
		st.finishLocked(false)
		return
	}
	r.Status = st.res.Status
	st.attemptFailedLocked(r)
}

// resetBothLocked resets the upstream stream with up and the downstream
// one with down, and ends the stream.
func (st *relayStream) resetBothLocked(up, down http2.ErrCode) {
	st.detachLocked(up)
	st.sc.rst(st.id, down)
	if st.attemptOpen {
		st.endAttemptLocked(st.res)
	}
	st.finishLocked(false)
}

// attemptTimeout fails the attempt that has no response header by its
// per-try timeout.
func (st *relayStream) attemptTimeout(cc *clientConn, uid uint32) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done || st.cc != cc || st.uid != uid || st.gotHeader {
		return
	}
	st.detachLocked(http2.ErrCodeCancel)
	st.attemptFailedLocked(Result{Err: ErrTimeout, Timeout: true})
}

// armLocked has the connection's timers wake the stream at its deadline
// or when it would have been idle for StreamIdleTimeout, the earlier.
func (st *relayStream) armLocked() {
	at := st.deadlineAt
	if d := st.sc.cfg.StreamIdleTimeout; d > 0 {
		if i := st.lastActive + int64(d); at == 0 || i < at {
			at = i
		}
	}
	if at != 0 {
		st.sc.timers.schedule(st, at)
	}
}

// wake ends the stream at its deadline, or one that relayed nothing either
// way for StreamIdleTimeout; otherwise it re-arms.
func (st *relayStream) wake() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return
	}
	now := mono()
	if st.deadlineAt != 0 && now >= st.deadlineAt {
		st.timeoutLocked(ErrTimeout)
		return
	}
	if d := st.sc.cfg.StreamIdleTimeout; d > 0 && now-st.lastActive >= int64(d) {
		st.timeoutLocked(ErrIdleTimeout)
		return
	}
	st.armLocked()
}

// active notes traffic on the stream (the idle timeout's clock).
func (st *relayStream) activeLocked() {
	if st.sc.cfg.StreamIdleTimeout > 0 {
		st.lastActive = mono()
	}
}

// timeoutLocked ends the stream for a timeout: the handler's reply when no
// response started, else RST_STREAM CANCEL.
func (st *relayStream) timeoutLocked(err error) {
	if st.done {
		return
	}
	st.detachLocked(http2.ErrCodeCancel)
	r := Result{Err: err, Timeout: true, Status: st.res.Status}
	if st.attemptOpen {
		st.res.Err, st.res.Timeout = err, true
		st.endAttemptLocked(st.res)
	}
	if st.committed {
		st.sc.rst(st.id, http2.ErrCodeCancel)
	} else if rep := st.h.Reply(&r); rep != nil {
		st.replyLocked(rep)
	} else {
		st.sc.rst(st.id, http2.ErrCodeCancel)
	}
	st.finishLocked(false)
}

// attemptFailedLocked ends an attempt that relayed no response (it is
// detached): a retry, or the local answer.
func (st *relayStream) attemptFailedLocked(r Result) {
	if st.tryTimer != nil {
		st.tryTimer.Stop()
	}
	st.res = r
	if st.h.Retry(st.n, &st.res, st.replayableLocked()) {
		st.res.Retried = true
		st.endAttemptLocked(st.res)
		go st.runAttempt(st.n+1, false)
		return
	}
	st.endAttemptLocked(st.res)
	if rep := st.h.Reply(&st.res); rep != nil {
		st.replyLocked(rep)
	} else {
		st.sc.rst(st.id, resetCode(&st.res))
	}
	st.finishLocked(false)
}

// detachLocked leaves the current upstream stream, resetting it with code.
func (st *relayStream) detachLocked(code http2.ErrCode) {
	if st.tryTimer != nil {
		st.tryTimer.Stop()
		st.tryTimer = nil
	}
	if st.cc != nil {
		st.cc.forget(st.uid, code)
		st.cc = nil
	}
}

func (st *relayStream) endAttemptLocked(r Result) {
	if !st.attemptOpen {
		return
	}
	st.attemptOpen = false
	st.endRes = r // a field: &r would escape, an allocation per attempt
	st.h.End(st.n, &st.endRes)
}

// maybeFinishLocked ends a stream whose response is complete: normally if
// the request is too, else with RST_STREAM NO_ERROR downstream (RFC 9113
// §8.1: the client may stop sending) and CANCEL upstream.
func (st *relayStream) maybeFinishLocked() {
	if !st.respEnded {
		return
	}
	if st.reqEnded && st.reqEndSent {
		if st.cc != nil {
			st.cc.forget(st.uid, noReset)
			st.cc = nil
		}
	} else {
		st.detachLocked(http2.ErrCodeCancel)
		st.sc.rst(st.id, http2.ErrCodeNo)
	}
	st.endAttemptLocked(st.res)
	st.finishLocked(true)
}

// replyLocked answers the stream locally.
func (st *relayStream) replyLocked(rep *Reply) {
	st.committed = true
	fields := make([]hpack.HeaderField, 0, len(rep.Header)+1)
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(rep.Status)})
	fields = append(fields, rep.Header...)
	st.sc.enqueue(item{kind: kHeaders, id: st.id, fields: fields, end: rep.Body == nil})
	for body := rep.Body; len(body) > 0; {
		n := min(len(body), frameSize)
		st.sc.enqueue(item{kind: kData, id: st.id, b: getBuf(body[:n]), end: n == len(body)})
		body = body[n:]
	}
	if rep.Body != nil && len(rep.Body) == 0 {
		st.sc.enqueue(item{kind: kData, id: st.id, b: getBuf(nil), end: true})
	}
	if !st.reqEnded {
		st.sc.rst(st.id, http2.ErrCodeNo)
	}
}

// finishLocked ends the stream: nothing more is relayed, buffers go back.
func (st *relayStream) finishLocked(completed bool) {
	if st.done {
		return
	}
	st.done = true
	if st.cancel != nil {
		st.cancel()
	}
	st.sc.timers.unschedule(st)
	st.detachLocked(http2.ErrCodeCancel)
	for i, b := range st.reqBufs {
		b.release()
		st.reqBufs[i] = nil
	}
	st.reqBufs = nil
	st.sc.removeStream(st.id, completed, completed && st.reqEnded)
	st.closeHandlerLocked()
}

// closeHandlerLocked calls h.Close once the stream is over and no attempt
// is being picked.
func (st *relayStream) closeHandlerLocked() {
	if !st.done || st.inAttempt || st.closed || st.attemptOpen {
		return
	}
	st.closed = true
	if st.h != nil {
		st.h.Close()
	}
}

// resetCode is the RST_STREAM code relayed downstream for a failed
// attempt: the upstream's own reset code, REFUSED_STREAM for a stream it
// never processed, INTERNAL_ERROR otherwise.
func resetCode(r *Result) http2.ErrCode {
	switch {
	case r.Unprocessed:
		return http2.ErrCodeRefusedStream
	case r.Reset != 0 && r.Reset != noReset:
		return r.Reset
	}
	return http2.ErrCodeInternal
}
