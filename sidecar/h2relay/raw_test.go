package h2relay

import (
	"bufio"
	"bytes"

	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// rawConn is a hand-driven HTTP/2 connection (either side) for the
// protocol tests: frames written and read one by one.
type rawConn struct {
	t   testing.TB
	nc  net.Conn
	fr  *http2.Framer
	bw  *bufio.Writer
	br  *bufio.Reader
	mu  sync.Mutex // writes
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newRawConn(t testing.TB, nc net.Conn) *rawConn {
	c := &rawConn{t: t, nc: nc, bw: bufio.NewWriter(nc), br: bufio.NewReader(nc)}
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.SetReuseFrames()
	c.enc = hpack.NewEncoder(&c.hb)
	return c
}

// dialRaw opens a client connection to the relay: preface and SETTINGS.
func dialRaw(t testing.TB, addr string, settings ...http2.Setting) *rawConn {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := newRawConn(t, nc)
	_, _ = c.bw.WriteString(http2.ClientPreface)
	c.write(func(fr *http2.Framer) error { return fr.WriteSettings(settings...) })
	return c
}

func (c *rawConn) write(f func(*http2.Framer) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := f(c.fr); err != nil {
		return err
	}
	return c.bw.Flush()
}

// block encodes header fields given as name, value pairs.
func (c *rawConn) block(kv ...string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hb.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), c.hb.Bytes()...)
}

func (c *rawConn) headers(id uint32, end bool, kv ...string) error {
	b := c.block(kv...)
	return c.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b, EndStream: end, EndHeaders: true})
	})
}

var getRequest = []string{":method", "GET", ":scheme", "http", ":authority", "test", ":path", "/"}

// next reads frames until match accepts one (settings, pings and window
// updates it does not want are skipped); an error or the connection's
// end fails the test.
func (c *rawConn) next(match func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading: %v", err)
		}
		if match(f) {
			return f
		}
	}
}

// goAwayOrEOF reads until a GOAWAY (returned) or the connection's end (nil).
func (c *rawConn) goAway() *http2.GoAwayFrame {
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			return nil
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g
		}
	}
}

// fakeUpstream accepts HTTP/2 connections and hands each to serve.
func fakeUpstream(t testing.TB, serve func(c *rawConn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1) // the accept loop: the connections' Adds happen while it runs
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				pre := make([]byte, len(http2.ClientPreface))
				if _, err := io_ReadFull(nc, pre); err != nil {
					return
				}
				c := newRawConn(t, nc)
				c.write(func(fr *http2.Framer) error { return fr.WriteSettings() })
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func io_ReadFull(nc net.Conn, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := nc.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// silentUpstream reads frames and never answers.
func silentUpstream(c *rawConn) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
		}
	}
}

func TestRequestHeaderChecks(t *testing.T) {
	_, addr := startBackend(t, "a")
	_ = addr
	up := fakeUpstream(t, func(c *rawConn) {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				b := c.block(":status", "204")
				c.write(func(fr *http2.Framer) error {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: b, EndStream: true, EndHeaders: true})
				})
			}
		}
	})
	relay, _ := startRelay(t, Config{}, &testHandler{addrs: []string{up}})
	c := dialRaw(t, relay)
	cases := []struct {
		extra []string
		want  http2.ErrCode // 0: a response
	}{
		{[]string{"te", "trailers"}, 0},
		{[]string{"connection", "keep-alive"}, http2.ErrCodeProtocol},
		{[]string{"te", "gzip"}, http2.ErrCodeProtocol},
		{[]string{"transfer-encoding", "chunked"}, http2.ErrCodeProtocol},
		{[]string{"upgrade", "h2c"}, http2.ErrCodeProtocol},
		{[]string{"keep-alive", "1"}, http2.ErrCodeProtocol},
		{[]string{"proxy-connection", "x"}, http2.ErrCodeProtocol},
	}
	for i, tc := range cases {
		id := uint32(2*i + 1)
		if err := c.headers(id, true, append(append([]string(nil), getRequest...), tc.extra...)...); err != nil {
			t.Fatal(err)
		}
		f := c.next(func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.RSTStreamFrame, *http2.MetaHeadersFrame:
				return f.Header().StreamID == id
			}
			return false
		})
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if tc.want == 0 || f.ErrCode != tc.want {
				t.Errorf("%v: RST_STREAM %v, want %v", tc.extra, f.ErrCode, tc.want)
			}
		case *http2.MetaHeadersFrame:
			if tc.want != 0 || f.PseudoValue("status") != "204" {
				t.Errorf("%v: response %v, want RST_STREAM %v", tc.extra, f.Fields, tc.want)
			}
		}
	}
	// Missing :path is malformed too.
	if err := c.headers(99, true, ":method", "GET", ":scheme", "http", ":authority", "x"); err != nil {
		t.Fatal(err)
	}
	f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if f.StreamID != 99 || f.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("missing :path: RST_STREAM %d %v, want 99 PROTOCOL_ERROR", f.StreamID, f.ErrCode)
	}
}

func TestMaxConcurrentStreams(t *testing.T) {
	up := fakeUpstream(t, silentUpstream)
	relay, _ := startRelay(t, Config{MaxConcurrentStreams: 5}, &testHandler{addrs: []string{up}})
	c := dialRaw(t, relay)
	sf := c.next(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() }).(*http2.SettingsFrame)
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 5 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d (%v), want 5", v, ok)
	}
	for id := uint32(1); id <= 11; id += 2 {
		if err := c.headers(id, true, getRequest...); err != nil {
			t.Fatal(err)
		}
	}
	f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if f.StreamID != 11 || f.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("RST_STREAM %d %v, want 11 REFUSED_STREAM (the sixth stream)", f.StreamID, f.ErrCode)
	}
}

func TestRapidResetGoAway(t *testing.T) {
	up := fakeUpstream(t, silentUpstream) // no stream ever completes
	_, good := startBackend(t, "good")
	h := &testHandler{addrs: []string{up}}
	relay, _ := startRelay(t, Config{MaxConcurrentStreams: 10, MaxRapidResets: 50}, h)
	c := dialRaw(t, relay)
	go func() {
		for id := uint32(1); id < 2000; id += 2 {
			if c.headers(id, true, getRequest...) != nil {
				return
			}
			if c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) }) != nil {
				return
			}
		}
	}()
	g := c.goAway()
	if g == nil || g.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", g)
	}
	// The relay still serves other connections.
	h.addrs = []string{good}
	if _, err := dialGRPC(t, relay).EmptyCall(testCtx(t), &testpb.Empty{}); err != nil {
		t.Fatalf("another connection after the rapid-reset GOAWAY: %v", err)
	}
}

func TestContinuationFloodGoAway(t *testing.T) {
	up := fakeUpstream(t, silentUpstream)
	_, good := startBackend(t, "good")
	h := &testHandler{addrs: []string{up}}
	relay, _ := startRelay(t, Config{MaxHeaderListSize: 16 << 10}, h)
	c := dialRaw(t, relay)
	// One header block of ~1 MiB: HEADERS without END_HEADERS, then
	// CONTINUATION frames.
	var kv []string
	kv = append(kv, getRequest...)
	for i := 0; i < 1000; i++ {
		kv = append(kv, "x-flood", strings.Repeat("a", 1000))
	}
	block := c.block(kv...)
	go func() {
		err := c.write(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1000], EndStream: true})
		})
		for rest := block[1000:]; err == nil && len(rest) > 0; {
			n := min(len(rest), 16000)
			frag := rest[:n]
			rest = rest[n:]
			err = c.write(func(fr *http2.Framer) error { return fr.WriteContinuation(1, len(rest) == 0, frag) })
		}
	}()
	g := c.goAway()
	if g == nil || g.ErrCode != http2.ErrCodeProtocol {
		t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", g)
	}
	h.addrs = []string{good}
	if _, err := dialGRPC(t, relay).EmptyCall(testCtx(t), &testpb.Empty{}); err != nil {
		t.Fatalf("another connection after the CONTINUATION flood: %v", err)
	}
}

func TestPingFloodBounded(t *testing.T) {
	relay, _ := startRelay(t, Config{MaxControlFrames: 100}, &testHandler{addrs: []string{"127.0.0.1:1"}})
	nc, err := net.Dial("tcp", relay)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A client that sends PINGs and never reads: the acknowledgements
	// queue up (the socket buffers fill) until the relay gives up.
	c := newRawConn(t, nc)
	_, _ = c.bw.WriteString(http2.ClientPreface)
	c.write(func(fr *http2.Framer) error { return fr.WriteSettings() })
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	var werr error
	for i := 0; i < 1_000_000 && werr == nil; i++ {
		_ = nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		werr = c.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{byte(i)}) })
	}
	if werr == nil {
		t.Fatal("a million unread PINGs and the connection is still open")
	}
}

// TestGoAwayUnprocessedRetried: an upstream that answers a stream with
// GOAWAY (last stream 0) did not process it: the relay offers a retry and
// the stream succeeds on another endpoint.
func TestGoAwayUnprocessedRetried(t *testing.T) {
	up := fakeUpstream(t, func(c *rawConn) {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.MetaHeadersFrame); ok {
				c.write(func(fr *http2.Framer) error { return fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
			}
		}
	})
	_, good := startBackend(t, "good")
	h := &testHandler{addrs: []string{up, good}, retries: 1}
	relay, srv := startRelay(t, Config{}, h)
	if _, err := dialGRPC(t, relay).UnaryCall(testCtx(t), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1000)}}); err != nil {
		t.Fatal(err)
	}
	rs := h.resultsOf(t, 2)
	if len(rs) != 2 || !rs[0].Unprocessed || !errors.Is(rs[0].Err, ErrGoAway) || rs[1].Status != 200 {
		t.Fatalf("attempts %+v, want an unprocessed one then a 200", rs)
	}
	if n := srv.Pool().Conns(up); n != 0 {
		t.Fatalf("%d pooled connections to the endpoint that went away, want 0", n)
	}
}

// TestSlowReaderBounded: a client that stops reading makes the upstream
// stop sending once the relay holds one stream window: the relay opens the
// upstream's window only as the client drains it.
func TestSlowReaderBounded(t *testing.T) {
	t.Run("16KiB frames", func(t *testing.T) { testSlowReader(t, frameSize, 8<<20) })
	// A peer sending tiny frames costs the relay bytes, not a buffer each.
	t.Run("1-byte frames", func(t *testing.T) { testSlowReader(t, 1, 256<<10) })
}

func testSlowReader(t *testing.T, frame int, total int64) {
	const window = 128 << 10
	type blocked struct{ sent int64 }
	blocks := make(chan blocked, 100)
	up := fakeUpstream(t, func(c *rawConn) {
		var streamWin, connWin int64 = initialWindow, initialWindow
		var id uint32
		var sent int64
		frames := make(chan http2.Frame)
		go func() {
			defer close(frames)
			for {
				f, err := c.fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.WindowUpdateFrame:
					frames <- &http2.WindowUpdateFrame{FrameHeader: f.FrameHeader, Increment: f.Increment}
				case *http2.MetaHeadersFrame:
					frames <- f
				case *http2.SettingsFrame:
					if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
						frames <- &http2.WindowUpdateFrame{FrameHeader: http2.FrameHeader{StreamID: 1<<31 - 1}, Increment: v}
					}
				}
			}
		}()
		buf := make([]byte, frame)
		for f := range frames {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				id = f.StreamID
				b := c.block(":status", "200")
				c.write(func(fr *http2.Framer) error {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b, EndHeaders: true})
				})
			case *http2.WindowUpdateFrame:
				switch f.StreamID {
				case 0:
					connWin += int64(f.Increment)
				case 1<<31 - 1: // the initial window setting
					streamWin = int64(f.Increment)
				default:
					streamWin += int64(f.Increment)
				}
			}
			if id == 0 {
				continue
			}
			for sent < total && min(streamWin, connWin) > 0 {
				n := min(int64(len(buf)), streamWin, connWin, total-sent)
				sent += n
				streamWin -= n
				connWin -= n
				c.write(func(fr *http2.Framer) error { return fr.WriteData(id, sent == total, buf[:n]) })
			}
			if sent < total {
				select {
				case blocks <- blocked{sent}:
				default: // the test stopped looking
				}
			}
		}
	})
	base := BufferedBytes()
	relay, _ := startRelay(t, Config{StreamWindow: window}, &testHandler{addrs: []string{up}})
	c := dialRaw(t, relay) // the client's windows stay at 65535
	if err := c.headers(1, true, getRequest...); err != nil {
		t.Fatal(err)
	}
	// Read nothing; wait until the upstream is held back by the window
	// (a relay that opened windows it had not drained would let it send
	// all 8 MiB and never block).
	var b blocked
	select {
	case b = <-blocks:
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream was never held back by flow control")
	}
	// Once the relay has read what the upstream sent, it holds all of it
	// but what the client's 65535-byte window let through.
	var held int64
	waitFor(t, func() bool {
		held = BufferedBytes() - base
		return held+initialWindow >= b.sent
	}, "the relay to read what the upstream sent")
	if b.sent > window+initialWindow+frameSize {
		t.Fatalf("the upstream sent %d bytes to a client that read none (window %d + its own 65535): the relay opened windows it had not drained", b.sent, window)
	}
	if held > window+2*frameSize {
		t.Fatalf("the relay holds %d bytes of DATA, want at most one stream window (%d)", held, window)
	}
	t.Logf("slow reader: upstream blocked after %d bytes; relay holds %d bytes (stream window %d)", b.sent, held, window)
	// Now read everything.
	c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(total)) })
	c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(1, uint32(total)) })
	var got int
	for {
		f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
		got += len(f.Data())
		if f.StreamEnded() {
			break
		}
	}
	if int64(got) != total {
		t.Fatalf("received %d bytes, want %d", got, total)
	}
}

// answer204 is an upstream answering every request 204.
func answer204(c *rawConn) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			b := c.block(":status", "204")
			c.write(func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: b, EndStream: true, EndHeaders: true})
			})
		}
	}
}

// TestGoAwayFromHandler: a stream's Request.GoAway drains its connection:
// GOAWAY naming the streams taken, the stream still answered, then the
// connection ends.
func TestGoAwayFromHandler(t *testing.T) {
	up := fakeUpstream(t, answer204)
	relay, _ := startRelay(t, Config{}, &testHandler{addrs: []string{up}})
	c := dialRaw(t, relay)
	if err := c.headers(1, true, append(append([]string(nil), getRequest...), "x-goaway", "1")...); err != nil {
		t.Fatal(err)
	}
	var g *http2.GoAwayFrame
	answered := false
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			break // the relay closed the connection
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			g = f
		case *http2.MetaHeadersFrame:
			answered = f.StreamID == 1 && f.PseudoValue("status") == "204"
		}
	}
	if g == nil || g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v, want NO_ERROR with last stream 1", g)
	}
	if !answered {
		t.Fatal("the stream that asked for the drain was not answered before the connection ended")
	}
}

// TestStreamIdleTimeout: a stream with no frame either way for
// StreamIdleTimeout ends with the handler's timeout reply.
func TestStreamIdleTimeout(t *testing.T) {
	up := fakeUpstream(t, silentUpstream)
	h := &testHandler{addrs: []string{up}}
	relay, _ := startRelay(t, Config{StreamIdleTimeout: 50 * time.Millisecond}, h)
	c := dialRaw(t, relay)
	if err := c.headers(1, true, getRequest...); err != nil {
		t.Fatal(err)
	}
	f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
	if got := Header(f.Fields).Get("grpc-status"); got != "4" {
		t.Fatalf("reply %v, want the timeout reply (grpc-status 4)", f.Fields)
	}
	rs := h.resultsOf(t, 1)
	if len(rs) != 1 || !rs[0].Timeout || !errors.Is(rs[0].Err, ErrIdleTimeout) {
		t.Fatalf("attempts %+v, want one ended by the idle timeout", rs)
	}
}

// TestMaxStreamsPerConnection: the connection drains after its Nth stream.
func TestMaxStreamsPerConnection(t *testing.T) {
	up := fakeUpstream(t, answer204)
	relay, _ := startRelay(t, Config{MaxStreamsPerConnection: 2}, &testHandler{addrs: []string{up}})
	c := dialRaw(t, relay)
	for _, id := range []uint32{1, 3} {
		if err := c.headers(id, true, getRequest...); err != nil {
			t.Fatal(err)
		}
	}
	g := c.goAway()
	if g == nil || g.LastStreamID != 3 || g.ErrCode != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want NO_ERROR after stream 3", g)
	}
}
