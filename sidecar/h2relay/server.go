package h2relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// Server relays the streams of downstream HTTP/2 connections to the
// upstream connections of a Pool.
type Server struct {
	cfg  Config
	pool *Pool
}

// NewServer returns a Server over pool (whose Config it shares).
func NewServer(pool *Pool) *Server { return &Server{cfg: pool.cfg, pool: pool} }

// Pool returns the server's upstream pool.
func (s *Server) Pool() *Pool { return s.pool }

// poolFor is the pool of t's connection: t.Pool, or the server's.
func (s *Server) poolFor(t Target) *Pool {
	if t.Pool != nil {
		return t.Pool
	}
	return s.pool
}

// ErrPreface is returned by ServeConn for a connection that does not open
// with the HTTP/2 client preface.
var ErrPreface = errors.New("h2relay: bad HTTP/2 client preface")

// ServeConn serves one downstream HTTP/2 connection (prior knowledge: the
// client preface is still to be read from conn, or from r when not nil,
// which wraps conn's reader and may hold bytes already read) until it ends.
// Canceling ctx drains it: GOAWAY, then it ends when its streams have. It
// closes conn.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn, r io.Reader, h Handler) error {
	c := newConn(conn, &s.cfg, r)
	cctx, cancel := context.WithCancel(ctx)
	sc := &serverConn{conn: c, srv: s, h: h, ctx: cctx, cancel: cancel, streams: map[uint32]*relayStream{}}
	sc.goAwayFn = sc.goAway
	defer cancel()
	return sc.serve(ctx)
}

type closedStream struct {
	id  uint32
	how int
}

// serverConn is one downstream connection.
type serverConn struct {
	*conn
	srv      *Server
	h        Handler
	ctx      context.Context // canceled when the connection ends
	cancel   context.CancelFunc
	goAwayFn func() // sc.goAway, made once (Request.GoAway)

	// under conn.mu
	streams    map[uint32]*relayStream
	recent     [closedRing]closedStream // recently closed streams
	closedNext int
	opened     int // streams taken
	goingAway  bool
	lastID     uint32 // the highest stream id the client opened

	// read loop only
	recvConn     int64
	connCredit   int64
	windowFrames int64

	timers streamTimers // the streams' deadlines and idle checks

	rapid atomic.Int64 // streams reset by the client before their response, net of completed ones
	ended atomic.Bool
}

var clientPreface = []byte(http2.ClientPreface)

func (sc *serverConn) serve(drain context.Context) (err error) {
	go sc.writeLoop()
	defer func() {
		sc.cancel()
		sc.abortAll()
		sc.timers.stop()
		sc.close()
		<-sc.writeDone
	}()
	var pre [24]byte
	if _, err := io.ReadFull(sc.br, pre[:]); err != nil {
		return fmt.Errorf("h2relay: reading the client preface: %w", err)
	}
	if string(pre[:]) != http2.ClientPreface {
		return ErrPreface
	}
	cfg := sc.cfg
	sc.recvConn = int64(cfg.ConnWindow)
	sc.enqueue(
		item{kind: kSettings, sets: []http2.Setting{
			{ID: http2.SettingMaxConcurrentStreams, Val: cfg.MaxConcurrentStreams},
			{ID: http2.SettingInitialWindowSize, Val: cfg.StreamWindow},
			{ID: http2.SettingMaxFrameSize, Val: frameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: cfg.MaxHeaderListSize},
		}},
	)
	if cfg.ConnWindow > initialWindow {
		sc.enqueue(item{kind: kWindow, incr: cfg.ConnWindow - initialWindow})
	}
	stop := context.AfterFunc(drain, sc.goAway)
	defer stop()

	first := true
	for {
		f, wu, err := sc.readFrame()
		if err != nil {
			if se := (http2.StreamError{}); errors.As(err, &se) {
				sc.streamError(se)
				continue
			}
			if code, ok := sc.readError(err); ok {
				return sc.connError(code, err)
			}
			if sc.ended.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return sc.connError(http2.ErrCodeProtocol, errors.New("h2relay: first frame is not SETTINGS"))
			}
			first = false
		}
		if wu.ok {
			err = sc.window(wu)
		} else {
			err = sc.frame(f)
		}
		if err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return sc.connError(http2.ErrCode(ce), err)
			}
			return err
		}
	}
}

// readError maps a read error to the connection error to answer with,
// resetting the stream of a stream error (ok false then, and for I/O errors).
func (sc *serverConn) readError(err error) (http2.ErrCode, bool) {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		return 0, false
	case errors.As(err, &ce):
		return http2.ErrCode(ce), true
	case errors.Is(err, http2.ErrFrameTooLarge):
		return http2.ErrCodeFrameSize, true
	}
	return 0, false
}

// streamError resets the stream of a frame the framer rejected (a bad
// header block opens and closes its stream).
func (sc *serverConn) streamError(se http2.StreamError) {
	sc.mu.Lock()
	if se.StreamID > sc.lastID && se.StreamID%2 == 1 {
		sc.lastID = se.StreamID
	}
	sc.mu.Unlock()
	sc.abortStream(se.StreamID, se.Code)
}

// connError ends the connection with GOAWAY code.
func (sc *serverConn) connError(code http2.ErrCode, err error) error {
	sc.mu.Lock()
	last := sc.lastID
	sc.mu.Unlock()
	sc.cfg.Log("closing downstream HTTP/2 connection", "code", code.String(), "err", err)
	_ = sc.nc.SetWriteDeadline(time.Now().Add(time.Second))
	sc.enqueue(item{kind: kGoAway, id: last, code: code}, item{kind: kFlushClose})
	sc.ended.Store(true)
	<-sc.writeDone
	return nil
}

// goAway starts a graceful drain: GOAWAY with the last stream taken, and
// the connection ends when its streams have.
func (sc *serverConn) goAway() {
	sc.mu.Lock()
	if sc.goingAway || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.goingAway = true
	sc.enqueueLocked(item{kind: kGoAway, id: sc.lastID, code: http2.ErrCodeNo})
	if len(sc.streams) == 0 {
		sc.ended.Store(true)
		sc.enqueueLocked(item{kind: kFlushClose})
	}
	sc.mu.Unlock()
}

func (sc *serverConn) abortAll() {
	sc.mu.Lock()
	sts := make([]*relayStream, 0, len(sc.streams))
	for _, st := range sc.streams {
		sts = append(sts, st)
	}
	sc.mu.Unlock()
	for _, st := range sts {
		st.downReset(http2.ErrCodeCancel, false)
	}
}

func (sc *serverConn) stream(id uint32) *relayStream {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.streams[id]
}

// How a stream id at or below the last one opened was closed.
const (
	closedUnknown  = iota // never opened, or forgotten
	closedNormally        // both sides sent END_STREAM
	closedReset           // reset by either side
)

// closedRing is how many recently closed streams a connection remembers.
const closedRing = 128

// closedHow reports how stream id was closed, if it is among the recent.
func (sc *serverConn) closedHow(id uint32) int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, c := range sc.recent {
		if c.id == id {
			return c.how
		}
	}
	return closedUnknown
}

// removeStream forgets a finished stream; completed says it had its
// response (rapid reset accounting), normal that both sides ended it
// without a reset.
func (sc *serverConn) removeStream(id uint32, completed, normal bool) {
	if completed {
		if sc.rapid.Add(-1) < 0 {
			sc.rapid.Store(0)
		}
	}
	sc.mu.Lock()
	how := closedReset
	if normal {
		how = closedNormally
	}
	sc.recent[sc.closedNext%closedRing] = closedStream{id: id, how: how}
	sc.closedNext++
	delete(sc.streams, id)
	if sc.goingAway && len(sc.streams) == 0 && !sc.ended.Load() {
		sc.ended.Store(true)
		sc.enqueueLocked(item{kind: kFlushClose})
	}
	sc.mu.Unlock()
}

// rst resets stream id with code.
func (sc *serverConn) rst(id uint32, code http2.ErrCode) {
	sc.enqueue(item{kind: kRST, id: id, code: code})
}

func (sc *serverConn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return sc.headers(f)
	case *http2.DataFrame:
		return sc.data(f)
	case *http2.RSTStreamFrame:
		if f.StreamID > sc.lastOpened() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		premature := false
		if st := sc.stream(f.StreamID); st != nil {
			premature = st.downReset(f.ErrCode, true)
		}
		sc.mu.Lock()
		sc.closeSendLocked(f.StreamID) // nothing more goes out on it
		sc.mu.Unlock()
		if premature && sc.rapid.Add(1) > int64(sc.cfg.MaxRapidResets) {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if _, _, err := sc.applySettings(f); err != nil {
			return err
		}
		if sc.tooManyControl() {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		sc.enqueue(item{kind: kPing, ping: f.Data})
		if sc.tooManyControl() {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	case *http2.GoAwayFrame:
		// The client stops opening streams; those open finish.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.PriorityFrame:
		// Priorities are advisory; streams are relayed as they come.
		if f.StreamDep == f.StreamID {
			sc.abortStream(f.StreamID, http2.ErrCodeProtocol) // depends on itself (RFC 9113 §5.3.1)
		}
	}
	return nil
}

// window takes a WINDOW_UPDATE. More than 10 per DATA frame we sent
// (beyond a first 1000) is a flood (Envoy's
// max_inbound_window_update_frames_per_data_frame_sent).
func (sc *serverConn) window(f windowFrame) error {
	sc.windowFrames++
	if sc.windowFrames > 1000+10*sc.written.Load() {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	if f.streamID != 0 && f.streamID > sc.lastOpened() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if !sc.windowUpdate(f.streamID, f.incr) {
		if f.streamID == 0 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		sc.abortStream(f.streamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (sc *serverConn) lastOpened() uint32 {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.lastID
}

// abortStream resets a stream for a protocol error of the client.
func (sc *serverConn) abortStream(id uint32, code http2.ErrCode) {
	if st := sc.stream(id); st != nil {
		st.downReset(code, false)
	}
	sc.rst(id, code)
}

func (sc *serverConn) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.mu.Lock()
	st := sc.streams[id]
	last, goingAway := sc.lastID, sc.goingAway
	if st == nil && id > last {
		sc.lastID = id
	}
	sc.mu.Unlock()
	if f.HasPriority() && f.Priority.StreamDep == id {
		sc.abortStream(id, http2.ErrCodeProtocol) // depends on itself (RFC 9113 §5.3.1)
		return nil
	}
	if st != nil {
		if st.endedNormally() {
			// Both sides ended it (our END_STREAM may have reached the
			// client before the stream was forgotten): it is closed.
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		// Trailers: they end the request and carry no pseudo fields.
		if st.requestEnded() {
			sc.abortStream(id, http2.ErrCodeStreamClosed) // half-closed (remote)
			return nil
		}
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			sc.abortStream(id, http2.ErrCodeProtocol)
			return nil
		}
		if code := st.downTrailers(f.Fields); code != 0 {
			sc.abortStream(id, code)
		}
		return nil
	}
	if id <= last {
		switch sc.closedHow(id) {
		case closedNormally: // both sides ended it: HEADERS on a closed stream
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		case closedReset: // its frames may have been in flight when it was reset
			sc.rst(id, http2.ErrCodeStreamClosed)
			return nil
		}
		return http2.ConnectionError(http2.ErrCodeProtocol) // a stream id that went backwards
	}
	if goingAway {
		return nil // above the GOAWAY's last stream: ignored
	}
	if f.Truncated {
		sc.rst(id, http2.ErrCodeRefusedStream) // header list too large (a 431 in HTTP/1)
		return nil
	}
	if code := checkRequest(f); code != 0 {
		sc.rst(id, code)
		return nil
	}
	sc.mu.Lock()
	// Open streams are the ones we have not ended (END_STREAM or
	// RST_STREAM written): a stream finished here whose end is still in the
	// write queue counts, as it does for the client.
	if len(sc.streams) >= int(sc.cfg.MaxConcurrentStreams) || len(sc.send) >= int(sc.cfg.MaxConcurrentStreams) {
		sc.mu.Unlock()
		sc.rst(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st = newRelayStream(sc, id, f)
	sc.streams[id] = st
	sc.openSendLocked(id)
	sc.opened++
	drain := sc.cfg.MaxStreamsPerConnection > 0 && sc.opened >= sc.cfg.MaxStreamsPerConnection
	sc.mu.Unlock()
	if drain {
		sc.goAway() // this stream is the last one taken
	}
	st.open()
	return nil
}

// checkRequest validates a request header (RFC 9113 §8.2, §8.3.1): the
// pseudo fields a request needs, no connection-specific field, TE only
// "trailers". Non-zero is the stream error to reset with.
func checkRequest(f *http2.MetaHeadersFrame) http2.ErrCode {
	method := f.PseudoValue("method")
	if method == "" || f.PseudoValue("status") != "" {
		return http2.ErrCodeProtocol
	}
	if method == "CONNECT" {
		if f.PseudoValue("authority") == "" || f.PseudoValue("scheme") != "" || f.PseudoValue("path") != "" {
			return http2.ErrCodeProtocol
		}
	} else if f.PseudoValue("scheme") == "" || f.PseudoValue("path") == "" {
		return http2.ErrCodeProtocol
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecific(hf.Name) || (hf.Name == "te" && hf.Value != "trailers") {
			return http2.ErrCodeProtocol
		}
		if hf.Name == "content-length" {
			if _, err := strconv.ParseUint(hf.Value, 10, 63); err != nil {
				return http2.ErrCodeProtocol
			}
		}
	}
	return 0
}

func (sc *serverConn) data(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length)
	sc.recvConn -= n
	if sc.recvConn < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	// The connection window is given back as data arrives: what one stream
	// may hold is bounded by its own window.
	sc.connCredit += n
	if sc.connCredit >= int64(sc.cfg.ConnWindow/2) {
		sc.enqueue(item{kind: kWindow, incr: uint32(sc.connCredit)})
		sc.recvConn += sc.connCredit
		sc.connCredit = 0
	}
	st := sc.stream(id)
	if st == nil {
		sc.mu.Lock()
		last, goingAway := sc.lastID, sc.goingAway
		sc.mu.Unlock()
		if id > last && !goingAway {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		sc.rst(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if code := st.downData(f.Data(), int(n), f.StreamEnded()); code != 0 {
		sc.abortStream(id, code)
	}
	return nil
}

// newConn's reader: the preface and frames come through br.
func newConn(nc net.Conn, cfg *Config, r io.Reader) *conn {
	if r == nil {
		r = nc
	}
	br := bufio.NewReaderSize(r, 32<<10)
	c := newFramedConn(nc, cfg, br)
	c.br = br
	return c
}

// Pool holds the upstream HTTP/2 connections of one set of endpoints,
// pooled per endpoint address.
type Pool struct {
	cfg    Config
	mu     sync.Mutex
	eps    map[string]*endpointConns
	closed bool
}

type endpointConns struct {
	conns   []*clientConn
	dialing chan struct{}
}

// NewPool returns a pool with cfg's settings (defaults filled in).
func NewPool(cfg Config) *Pool {
	cfg.setDefaults()
	return &Pool{cfg: cfg, eps: map[string]*endpointConns{}}
}

// Close closes every pooled connection (their streams fail) and makes the
// pool refuse new streams.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*clientConn
	for _, ep := range p.eps {
		all = append(all, ep.conns...)
	}
	p.eps = map[string]*endpointConns{}
	p.mu.Unlock()
	for _, cc := range all {
		cc.close()
	}
}

// CloseIdle closes the connections without streams.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	var idle []*clientConn
	for _, ep := range p.eps {
		for _, cc := range ep.conns {
			if cc.idleNow() {
				idle = append(idle, cc)
			}
		}
	}
	p.mu.Unlock()
	for _, cc := range idle {
		cc.close()
	}
}

// Conns returns the number of open upstream connections to addr.
func (p *Pool) Conns(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ep := p.eps[addr]; ep != nil {
		return len(ep.conns)
	}
	return 0
}

var errPoolClosed = errors.New("h2relay: upstream pool closed")

// tryAcquire returns a pooled connection to addr with a stream slot
// reserved, or nil when that takes a dial (or a wait for one).
func (p *Pool) tryAcquire(addr string) *clientConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ep := p.eps[addr]; ep != nil && !p.closed {
		for _, cc := range ep.conns {
			if cc.reserve() {
				return cc
			}
		}
	}
	return nil
}

// acquire returns a connection to t.Addr with a stream slot reserved.
func (p *Pool) acquire(ctx context.Context, t Target) (*clientConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		ep := p.eps[t.Addr]
		if ep == nil {
			ep = &endpointConns{}
			p.eps[t.Addr] = ep
		}
		for _, cc := range ep.conns {
			if cc.reserve() {
				p.mu.Unlock()
				return cc, nil
			}
		}
		if ch := ep.dialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		ep.dialing = ch
		p.mu.Unlock()
		cc, err := p.dial(ctx, t)
		p.mu.Lock()
		ep.dialing = nil
		close(ch)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed {
			p.mu.Unlock()
			cc.close()
			return nil, errPoolClosed
		}
		ep.conns = append(ep.conns, cc)
		ok := cc.reserve()
		p.mu.Unlock()
		if ok {
			return cc, nil
		}
	}
}

func (p *Pool) remove(cc *clientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep := p.eps[cc.addr]
	if ep == nil {
		return
	}
	for i, x := range ep.conns {
		if x == cc {
			ep.conns = append(ep.conns[:i], ep.conns[i+1:]...)
			break
		}
	}
	if len(ep.conns) == 0 && ep.dialing == nil {
		delete(p.eps, cc.addr)
	}
}

func (p *Pool) dial(ctx context.Context, t Target) (*clientConn, error) {
	dial := t.Dial
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, t.Addr)
	if err != nil {
		return nil, err
	}
	return newClientConn(p, t.Addr, nc), nil
}
