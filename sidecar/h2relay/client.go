package h2relay

import (
	"bufio"
	"errors"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientConn is one upstream HTTP/2 connection carrying relayed streams.
type clientConn struct {
	*conn
	pool *Pool
	addr string

	// under conn.mu
	streams    map[uint32]*relayStream
	nextID     uint32
	active     int    // streams reserved or open
	peerMax    uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS
	goaway     bool   // no new streams
	goawayLast uint32
	idle       *time.Timer

	// read loop only
	recvConn   int64
	connCredit int64
}

func newClientConn(p *Pool, addr string, nc net.Conn) *clientConn {
	cfg := &p.cfg
	c := newFramedConn(nc, cfg, bufio.NewReaderSize(nc, 32<<10))
	cc := &clientConn{
		conn:     c,
		pool:     p,
		addr:     addr,
		streams:  map[uint32]*relayStream{},
		nextID:   1,
		peerMax:  100, // until the server's SETTINGS say otherwise (RFC 9113 §6.5.2 suggests no less)
		recvConn: int64(cfg.ConnWindow),
	}
	// The preface, our SETTINGS and the connection window go out first.
	_, _ = c.bw.WriteString(http2.ClientPreface)
	c.enqueue(item{kind: kSettings, sets: []http2.Setting{
		{ID: http2.SettingEnablePush, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: cfg.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: frameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: cfg.MaxHeaderListSize},
	}})
	if cfg.ConnWindow > initialWindow {
		c.enqueue(item{kind: kWindow, incr: cfg.ConnWindow - initialWindow})
	}
	go c.writeLoop()
	go cc.readLoop()
	return cc
}

// reserve takes a stream slot if the connection can open another stream.
func (cc *clientConn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.goaway || cc.active >= int(cc.peerMax) || cc.nextID > maxWindow {
		return false
	}
	cc.active++
	if cc.idle != nil {
		cc.idle.Stop()
		cc.idle = nil
	}
	return true
}

// unreserve gives back a slot no stream used.
func (cc *clientConn) unreserve() {
	cc.mu.Lock()
	cc.releaseLocked()
	cc.mu.Unlock()
}

func (cc *clientConn) releaseLocked() {
	cc.active--
	if cc.active > 0 || cc.closed {
		return
	}
	if cc.goaway {
		cc.enqueueLocked(item{kind: kFlushClose})
		return
	}
	cc.idle = time.AfterFunc(cc.cfg.IdleTimeout, func() {
		if cc.idleNow() {
			cc.close()
		}
	})
}

func (cc *clientConn) idleNow() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.active == 0
}

// open starts a reserved stream for st with header fields; end ends the
// request with the header. It returns the stream id, or false if the
// connection closed meanwhile (the slot is given back).
func (cc *clientConn) open(st *relayStream, fields []hpack.HeaderField, end bool) (uint32, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.nextID > maxWindow {
		cc.releaseLocked()
		return 0, false
	}
	id := cc.nextID
	cc.nextID += 2
	if cc.nextID > maxWindow {
		cc.goaway = true // stream ids exhausted: the next stream goes to a new connection
	}
	cc.streams[id] = st
	cc.openSendLocked(id)
	cc.enqueueLocked(item{kind: kHeaders, id: id, fields: fields, end: end})
	return id, true
}

// forget ends stream id on this connection, resetting it with code unless
// code is noReset, and gives back its slot.
func (cc *clientConn) forget(id uint32, code http2.ErrCode) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if _, ok := cc.streams[id]; !ok {
		return
	}
	delete(cc.streams, id)
	if code != noReset {
		cc.enqueueLocked(item{kind: kRST, id: id, code: code})
	}
	cc.releaseLocked()
}

// noReset: forget a stream that ended on its own.
const noReset http2.ErrCode = 1<<32 - 1

func (cc *clientConn) stream(id uint32) *relayStream {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.streams[id]
}

func (cc *clientConn) readLoop() {
	err := cc.read()
	cc.mu.Lock()
	failed := make([]*relayStream, 0, len(cc.streams))
	ids := make([]uint32, 0, len(cc.streams))
	for id, st := range cc.streams {
		failed = append(failed, st)
		ids = append(ids, id)
	}
	last, goaway := cc.goawayLast, cc.goaway
	cc.mu.Unlock()
	cc.pool.remove(cc)
	cc.close()
	if err == nil {
		err = ErrConnClosed
	}
	for i, st := range failed {
		r := Result{Err: err}
		if goaway && ids[i] > last {
			r.Unprocessed, r.Err = true, ErrGoAway
		}
		st.upFailed(cc, ids[i], r)
	}
}

func (cc *clientConn) read() error {
	first := true
	for {
		f, wu, err := cc.readFrame()
		if first && err == nil && wu.ok {
			cc.goAwayPeer(0, http2.ErrCodeProtocol)
			return errors.New("h2relay: upstream's first frame is not SETTINGS")
		}
		if err == nil && wu.ok {
			if err := cc.window(wu); err != nil {
				cc.goAwayPeer(0, http2.ErrCodeFlowControl)
				return err
			}
			continue
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if st := cc.stream(se.StreamID); st != nil {
					st.upFailed(cc, se.StreamID, Result{Err: se, Reset: se.Code})
				}
				cc.forget(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				cc.goAwayPeer(0, http2.ErrCode(ce))
			} else if errors.Is(err, http2.ErrFrameTooLarge) {
				cc.goAwayPeer(0, http2.ErrCodeFrameSize)
			}
			return err
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				cc.goAwayPeer(0, http2.ErrCodeProtocol)
				return errors.New("h2relay: upstream's first frame is not SETTINGS")
			}
			first = false
		}
		if err := cc.frame(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				cc.goAwayPeer(0, http2.ErrCode(ce))
			}
			return err
		}
	}
}

// window takes a WINDOW_UPDATE from the upstream.
func (cc *clientConn) window(f windowFrame) error {
	if cc.windowUpdate(f.streamID, f.incr) {
		return nil
	}
	if f.streamID == 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	if st := cc.stream(f.streamID); st != nil {
		st.upFailed(cc, f.streamID, Result{Err: http2.StreamError{StreamID: f.streamID, Code: http2.ErrCodeFlowControl}})
	}
	cc.forget(f.streamID, http2.ErrCodeFlowControl)
	return nil
}

// goAwayPeer tells the upstream we close the connection for a protocol error.
func (cc *clientConn) goAwayPeer(last uint32, code http2.ErrCode) {
	_ = cc.nc.SetWriteDeadline(time.Now().Add(time.Second))
	cc.enqueue(item{kind: kGoAway, id: last, code: code}, item{kind: kFlushClose})
	<-cc.writeDone
}

func (cc *clientConn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		st := cc.stream(f.StreamID)
		if st == nil {
			cc.enqueue(item{kind: kRST, id: f.StreamID, code: http2.ErrCodeStreamClosed})
			return nil
		}
		st.upHeaders(cc, f.StreamID, f)
	case *http2.DataFrame:
		n := int64(f.Length)
		cc.recvConn -= n
		if cc.recvConn < 0 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		cc.connCredit += n
		if cc.connCredit >= int64(cc.cfg.ConnWindow/2) {
			cc.enqueue(item{kind: kWindow, incr: uint32(cc.connCredit)})
			cc.recvConn += cc.connCredit
			cc.connCredit = 0
		}
		st := cc.stream(f.StreamID)
		if st == nil {
			return nil // a stream we reset: its frames in flight are ignored
		}
		st.upData(cc, f.StreamID, f.Data(), int(n), f.StreamEnded())
	case *http2.RSTStreamFrame:
		if st := cc.stream(f.StreamID); st != nil {
			st.upReset(cc, f.StreamID, f.ErrCode)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		max, has, err := cc.applySettings(f)
		if err != nil {
			return err
		}
		if has {
			cc.mu.Lock()
			cc.peerMax = max
			cc.mu.Unlock()
		}
		if cc.tooManyControl() {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			cc.enqueue(item{kind: kPing, ping: f.Data})
			if cc.tooManyControl() {
				return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
			}
		}
	case *http2.GoAwayFrame:
		cc.peerGoAway(f.LastStreamID, f.ErrCode)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // we disabled push
	}
	return nil
}

// peerGoAway takes an upstream GOAWAY: no new streams on this connection,
// and the streams above last were not processed: they fail as Unprocessed
// (their relays may retry them elsewhere).
func (cc *clientConn) peerGoAway(last uint32, code http2.ErrCode) {
	cc.mu.Lock()
	cc.goaway = true
	cc.goawayLast = last
	var failed []*relayStream
	var ids []uint32
	for id, st := range cc.streams {
		if id > last {
			failed = append(failed, st)
			ids = append(ids, id)
		}
	}
	if cc.active == 0 {
		cc.enqueueLocked(item{kind: kFlushClose})
	}
	cc.mu.Unlock()
	cc.pool.remove(cc)
	for i, st := range failed {
		st.upFailed(cc, ids[i], Result{Err: ErrGoAway, Reset: code, Unprocessed: true})
	}
}
