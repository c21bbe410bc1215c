package h2relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// buf is one DATA frame's payload, pooled; refs counts its holders (the
// write queue and, while a request is replayable, its stream).
type buf struct {
	b    [frameSize]byte
	n    int
	refs atomic.Int32
}

var bufs = sync.Pool{New: func() any { return new(buf) }}

// buffered counts the DATA buffers held by all relays (not in the pool).
var buffered atomic.Int64

// BufferedBytes is the memory the relays hold for DATA in flight: pooled
// buffers in use, each one frame (16 KiB).
func BufferedBytes() int64 { return buffered.Load() * frameSize }

func getBuf(p []byte) *buf {
	buffered.Add(1)
	b := bufs.Get().(*buf)
	b.n = copy(b.b[:], p)
	b.refs.Store(1)
	return b
}

func (b *buf) retain() { b.refs.Add(1) }

func (b *buf) release() {
	if b.refs.Add(-1) == 0 {
		buffered.Add(-1)
		bufs.Put(b)
	}
}

type itemKind uint8

const (
	kData itemKind = iota
	kHeaders
	kRST
	kWindow
	kPing
	kSettings
	kSettingsAck
	kGoAway
	kTableSize  // not a frame: the peer's SETTINGS_HEADER_TABLE_SIZE for the encoder
	kFlushClose // close the connection once everything before is written
)

// item is one frame to write. Items of one stream are written in order;
// DATA waits for flow-control window.
type item struct {
	kind   itemKind
	end    bool
	id     uint32
	b      *buf
	off    int // DATA: the payload is b.b[off:lim], lim 0 meaning b.n
	lim    int
	fields []hpack.HeaderField
	code   http2.ErrCode
	incr   uint32
	ping   [8]byte
	sets   []http2.Setting
	// st, when set on DATA, is told the bytes written (credit for the
	// other leg).
	st   *relayStream
	toUp bool // DATA going upstream (the request direction)
}

// sendState is a stream's send side on one connection.
type sendState struct {
	window int64
	parked []item
}

// conn is one HTTP/2 connection's framing: a reader (the owner's loop) and
// a writer goroutine fed by a queue, with send-side flow control.
type conn struct {
	nc  net.Conn
	cfg *Config
	br  *bufio.Reader
	fr  *http2.Framer // reader side; used only by the read loop
	bw  *bufio.Writer
	wfr *http2.Framer // writer side; used only by the write loop
	enc *hpack.Encoder
	hb  bytes.Buffer

	mu          sync.Mutex
	q, spare    []item
	wake        chan struct{}
	closed      bool
	unpark      bool
	control     int // control frames queued
	sendWindow  int64
	peerInit    int64 // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame   uint32
	send        map[uint32]*sendState
	parkedIDs   []uint32
	freeSend    []*sendState // closed streams' send states, for reuse
	parkedSpare []uint32
	waiting     int // DATA items queued or parked, not yet written
	writeDone   chan struct{}
	writeErr    error

	wuBuf [4]byte      // a WINDOW_UPDATE's payload (read loop only)
	hr    headerReader // header blocks (read loop only)

	// written counts DATA frames written (flood accounting).
	written atomic.Int64
}

func newFramedConn(nc net.Conn, cfg *Config, br *bufio.Reader) *conn {
	c := &conn{
		nc:         nc,
		cfg:        cfg,
		bw:         bufio.NewWriterSize(nc, 64<<10),
		wake:       make(chan struct{}, 1),
		sendWindow: initialWindow,
		peerInit:   initialWindow,
		peerFrame:  frameSize,
		send:       map[uint32]*sendState{},
		writeDone:  make(chan struct{}),
	}
	c.br = br
	c.fr = http2.NewFramer(nil, br)
	c.fr.SetMaxReadFrameSize(frameSize)
	c.hr.init(cfg.MaxHeaderListSize)
	c.fr.SetReuseFrames()
	c.wfr = http2.NewFramer(c.bw, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	return c
}

// enqueue queues items; it reports false once the connection is closed
// (the items' buffers are released).
func (c *conn) enqueue(items ...item) bool {
	c.mu.Lock()
	ok := c.enqueueLocked(items...)
	c.mu.Unlock()
	return ok
}

func (c *conn) enqueueLocked(items ...item) bool {
	if c.closed {
		for _, it := range items {
			if it.b != nil {
				it.b.release()
			}
		}
		return false
	}
	for _, it := range items {
		switch it.kind {
		case kRST, kPing, kSettingsAck:
			c.control++
		case kData:
			c.waiting++
		}
	}
	c.q = append(c.q, items...)
	c.signal()
	return true
}

// enqueueData queues a DATA item, appending it to the stream's last DATA
// item still waiting (queued, or parked for window) when that has room: a
// peer sending tiny frames costs the relay bytes, not a buffer per frame.
// Past MaxQueuedFrames waiting DATA frames the connection is closed (its
// peer does not read: Envoy's max_outbound_frames).
func (c *conn) enqueueData(it item) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		it.b.release()
		return false
	}
	if tail := c.tailDataLocked(it.id); tail != nil && tail.kind == kData && !tail.end && tail.lim == 0 &&
		tail.st == it.st && tail.toUp == it.toUp && tail.b.refs.Load() == 1 && tail.b.n < frameSize {
		k := copy(tail.b.b[tail.b.n:], it.b.b[it.off:it.b.n])
		tail.b.n += k
		it.off += k
		if it.dataLen() == 0 {
			tail.end = it.end
			it.b.release()
			return true
		}
		// The rest goes in the item's own buffer, after the tail, moved to
		// its start so that later frames can fill it.
		it.b.n = copy(it.b.b[:], it.b.b[it.off:it.b.n])
		it.off = 0
	}
	c.waiting++
	if c.waiting > c.cfg.MaxQueuedFrames {
		c.cfg.Log("closing HTTP/2 connection: DATA frames pile up unread", "remote", c.nc.RemoteAddr().String(), "frames", c.waiting)
		it.b.release()
		c.closed = true
		c.signal()
		_ = c.nc.Close()
		return false
	}
	c.q = append(c.q, it)
	c.signal()
	return true
}

// tailDataLocked is the last item waiting for stream id, when that is
// known cheaply: the queue's last when it is the stream's, or with an
// empty queue the stream's last parked one (nil otherwise: a queued item
// of the stream may follow its parked ones).
func (c *conn) tailDataLocked(id uint32) *item {
	if n := len(c.q); n > 0 {
		if c.q[n-1].id == id {
			return &c.q[n-1]
		}
		return nil
	}
	if s := c.send[id]; s != nil && len(s.parked) > 0 {
		return &s.parked[len(s.parked)-1]
	}
	return nil
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// tooManyControl reports a peer that makes us queue control frames it does
// not read (a PING or SETTINGS flood).
func (c *conn) tooManyControl() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.control > c.cfg.MaxControlFrames
}

// openSend registers a stream's send side.
func (c *conn) openSendLocked(id uint32) {
	var s *sendState
	if n := len(c.freeSend); n > 0 {
		s = c.freeSend[n-1]
		c.freeSend[n-1] = nil
		c.freeSend = c.freeSend[:n-1]
	} else {
		s = new(sendState)
	}
	s.window = c.peerInit
	c.send[id] = s
}

// closeSend forgets a stream's send side, dropping its parked frames.
func (c *conn) closeSendLocked(id uint32) {
	s := c.send[id]
	if s == nil {
		return
	}
	for _, it := range s.parked {
		if it.b != nil {
			it.b.release()
			c.waiting--
		}
	}
	delete(c.send, id)
	clear(s.parked)
	s.parked = s.parked[:0]
	if len(c.freeSend) < 256 {
		c.freeSend = append(c.freeSend, s)
	}
}

// windowUpdate applies a WINDOW_UPDATE; false is a flow-control error.
func (c *conn) windowUpdate(id, incr uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == 0 {
		c.sendWindow += int64(incr)
		if c.sendWindow > maxWindow {
			return false
		}
	} else if s := c.send[id]; s != nil {
		s.window += int64(incr)
		if s.window > maxWindow {
			return false
		}
	}
	c.unpark = true
	c.signal()
	return true
}

// applySettings applies a peer's SETTINGS; false is a flow-control error.
func (c *conn) applySettings(f *http2.SettingsFrame) (maxStreams uint32, hasMax bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err = f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInit
			c.peerInit = int64(s.Val)
			for _, st := range c.send {
				st.window += delta
				if st.window > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.unpark = true
		case http2.SettingMaxFrameSize:
			c.peerFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			maxStreams, hasMax = s.Val, true
		case http2.SettingHeaderTableSize:
			// The writer encodes; tell it through the queue so the size
			// update is ordered with the header blocks.
			c.q = append(c.q, item{kind: kTableSize, incr: s.Val})
		}
		return nil
	})
	if err == nil {
		c.control++
		c.q = append(c.q, item{kind: kSettingsAck})
		c.signal()
	}
	return maxStreams, hasMax, err
}

// close stops the writer after what is queued (used on errors: the queue
// is dropped and the socket closed).
func (c *conn) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.signal()
	}
	c.mu.Unlock()
	_ = c.nc.Close()
}

// writeLoop writes queued frames until the connection closes.
func (c *conn) writeLoop() {
	defer close(c.writeDone)
	var out []item
	var credits []item
	var ended []uint32
	for {
		c.mu.Lock()
		for len(c.q) == 0 && !c.unpark && !c.closed {
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
		}
		if c.closed {
			c.dropLocked()
			c.mu.Unlock()
			return
		}
		out = out[:0]
		// Connection frames first (a SETTINGS acknowledgement goes out
		// before DATA its new window released: a peer may wait for the
		// ACK before it reads on), then the streams' frames in order (one
		// of a stream with parked frames parks behind them), then what
		// the windows now release.
		batch := c.q
		c.q = c.spare[:0]
		closing := false
		for _, it := range batch {
			if it.id == 0 && it.kind != kFlushClose {
				out = c.scheduleLocked(out, it)
			}
		}
		for _, it := range batch {
			if it.kind == kFlushClose {
				closing = true
				continue
			}
			if it.id != 0 {
				out = c.scheduleLocked(out, it)
			}
		}
		c.spare = batch[:0]
		if c.unpark {
			c.unpark = false
			out = c.unparkLocked(out)
		}
		c.mu.Unlock()

		credits = credits[:0]
		ended = ended[:0]
		nData := 0
		var err error
		for i := range out {
			it := &out[i]
			if err == nil {
				err = c.write(it)
			}
			if it.id != 0 && (it.end && (it.kind == kData || it.kind == kHeaders)) {
				ended = append(ended, it.id)
			}
			switch it.kind {
			case kData:
				nData++
				if it.st != nil && err == nil {
					credits = append(credits, item{st: it.st, toUp: it.toUp, incr: uint32(it.dataLen())})
				}
				it.b.release()
				c.written.Add(1)
			case kRST, kPing, kSettingsAck:
				c.mu.Lock()
				c.control--
				c.mu.Unlock()
			}
			*it = item{}
		}
		if err == nil {
			err = c.bw.Flush()
		}
		if len(ended) > 0 || nData > 0 {
			c.mu.Lock()
			c.waiting -= nData
			for _, id := range ended {
				c.closeSendLocked(id)
			}
			c.mu.Unlock()
		}
		for _, cr := range credits {
			cr.st.drained(cr.toUp, cr.incr)
		}
		if err != nil || closing {
			c.mu.Lock()
			c.writeErr = err
			c.closed = true
			c.dropLocked()
			c.mu.Unlock()
			_ = c.nc.Close()
			return
		}
	}
}

// scheduleLocked puts an item on the write list, or parks it behind its
// stream's waiting frames or for window.
func (c *conn) scheduleLocked(out []item, it item) []item {
	if it.id == 0 || it.kind == kGoAway || it.kind == kWindow {
		return append(out, it)
	}
	s := c.send[it.id]
	if s == nil {
		// The stream is gone: drop its frames, but a reset or a header
		// (a local reply) still goes out.
		if it.kind == kData {
			it.b.release()
			c.waiting--
			return out
		}
		return append(out, it)
	}
	if it.kind == kRST && it.code != http2.ErrCodeNo {
		c.closeSendLocked(it.id)
		return append(out, it)
	}
	// RST_STREAM NO_ERROR follows the response it closes.
	if len(s.parked) > 0 {
		s.parked = append(s.parked, it)
		return out
	}
	return c.sendOrParkLocked(out, s, it)
}

func (c *conn) sendOrParkLocked(out []item, s *sendState, it item) []item {
	if it.kind != kData {
		return append(out, it)
	}
	n := int64(it.dataLen())
	if n == 0 {
		return append(out, it)
	}
	w := min(s.window, c.sendWindow)
	if w <= 0 {
		c.park(s, it)
		return out
	}
	if n <= w {
		s.window -= n
		c.sendWindow -= n
		return append(out, it)
	}
	// Split: send what the window allows now, park the rest; each piece
	// credits the other leg with its own length.
	s.window -= w
	c.sendWindow -= w
	it.b.retain()
	c.waiting++ // the head is one more item
	head := it
	head.end = false
	head.lim = it.off + int(w)
	out = append(out, head)
	it.off += int(w)
	c.park(s, it)
	return out
}

func (it *item) dataLen() int {
	if it.lim > 0 {
		return it.lim - it.off
	}
	return it.b.n - it.off
}

func (c *conn) park(s *sendState, it item) {
	if len(s.parked) == 0 {
		c.parkedIDs = append(c.parkedIDs, it.id)
	}
	s.parked = append(s.parked, it)
}

// unparkLocked moves parked frames that the windows now allow to out.
func (c *conn) unparkLocked(out []item) []item {
	ids := c.parkedIDs
	c.parkedIDs = c.parkedSpare[:0]
	defer func() { c.parkedSpare = ids[:0] }()
	for _, id := range ids {
		s := c.send[id]
		if s == nil || len(s.parked) == 0 {
			continue
		}
		p := s.parked
		s.parked = p[:0]
		for i, it := range p {
			if len(s.parked) > 0 {
				s.parked = append(s.parked, p[i:]...)
				break
			}
			out = c.sendOrParkLocked(out, s, it)
		}
	}
	return out
}

func (c *conn) dropLocked() {
	for _, it := range c.q {
		if it.b != nil {
			it.b.release()
		}
	}
	c.q = nil
	for id := range c.send {
		c.closeSendLocked(id)
	}
}

// write writes one frame into the buffered writer.
func (c *conn) write(it *item) error {
	switch it.kind {
	case kData:
		return c.wfr.WriteData(it.id, it.end, it.b.b[it.off:it.off+it.dataLen()])
	case kHeaders:
		return c.writeHeaders(it.id, it.fields, it.end)
	case kRST:
		return c.wfr.WriteRSTStream(it.id, it.code)
	case kWindow:
		return c.wfr.WriteWindowUpdate(it.id, it.incr)
	case kPing:
		return c.wfr.WritePing(true, it.ping)
	case kSettings:
		return c.wfr.WriteSettings(it.sets...)
	case kSettingsAck:
		return c.wfr.WriteSettingsAck()
	case kTableSize:
		c.enc.SetMaxDynamicTableSizeLimit(it.incr)
	case kGoAway:
		return c.wfr.WriteGoAway(it.id, it.code, nil)
	}
	return nil
}

func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.hb.Reset()
	for _, f := range fields {
		if perRequest(f.Name) {
			// A value new on every request would only churn the dynamic
			// table, evicting the fields that repeat.
			f.Sensitive = true
		}
		if err := c.enc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hb.Bytes()
	max := int(c.peerFrameSize())
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = c.wfr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) peerFrameSize() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerFrame
}

// windowFrame is a WINDOW_UPDATE, read without the allocation the
// Framer makes for one (the steady DATA path gets one or two per frame).
type windowFrame struct {
	streamID, incr uint32
	ok             bool
}

// readFrame reads the next frame; a WINDOW_UPDATE comes back as wu.
func (c *conn) readFrame() (f http2.Frame, wu windowFrame, err error) {
	fh, err := c.fr.ReadFrameHeader()
	if err != nil {
		return nil, wu, err
	}
	if fh.Type != http2.FrameWindowUpdate {
		f, err = c.fr.ReadFrameForHeader(fh)
		if hf, ok := f.(*http2.HeadersFrame); ok && err == nil {
			mh, err := c.hr.readBlock(c.fr, hf)
			if err != nil {
				return nil, wu, err // not a nil *MetaHeadersFrame in a Frame
			}
			return mh, wu, nil
		}
		return f, wu, err
	}
	// A header block is read whole (its CONTINUATION frames with it), so
	// skipping the Framer here leaves its frame-order state consistent.
	if fh.Length != 4 {
		return nil, wu, http2.ConnectionError(http2.ErrCodeFrameSize)
	}
	if _, err := io.ReadFull(c.br, c.wuBuf[:]); err != nil {
		return nil, wu, err
	}
	incr := binary.BigEndian.Uint32(c.wuBuf[:]) & 0x7fffffff
	if incr == 0 {
		if fh.StreamID == 0 {
			return nil, wu, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil, wu, http2.StreamError{StreamID: fh.StreamID, Code: http2.ErrCodeProtocol}
	}
	return nil, windowFrame{streamID: fh.StreamID, incr: incr, ok: true}, nil
}

// perRequest reports a field whose value differs on every request (ids,
// trace context, a remaining timeout): encoded without indexing.
func perRequest(name string) bool {
	switch name {
	case "x-request-id", "traceparent", "tracestate", "grpc-timeout",
		"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid":
		return true
	}
	return false
}
