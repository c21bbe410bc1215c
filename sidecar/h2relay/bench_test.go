package h2relay

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// BenchmarkRelayData measures the relay's steady-state DATA path: one
// request stream of 16 KiB DATA frames from a raw client through the
// relay to an upstream that discards them and returns the window. One op
// is one relayed DATA frame; allocs/op is the relay's (the client and the
// upstream of the benchmark allocate nothing per frame).
func BenchmarkRelayData(b *testing.B) {
	up := fakeUpstream(b, func(c *rawConn) {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				blk := c.block(":status", "200")
				c.mu.Lock()
				_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: blk, EndHeaders: true})
				_ = c.bw.Flush()
				c.mu.Unlock()
			case *http2.DataFrame:
				if n := uint32(len(f.Data())); n > 0 {
					c.mu.Lock()
					_ = c.fr.WriteWindowUpdate(0, n)
					_ = c.fr.WriteWindowUpdate(f.StreamID, n)
					_ = c.bw.Flush()
					c.mu.Unlock()
				}
			}
		}
	})
	relay, _ := startRelay(b, Config{}, &testHandler{addrs: []string{up}})
	c := dialRaw(b, relay)

	// The client's send windows, fed by the relay's WINDOW_UPDATEs.
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var connWin, streamWin int64 = initialWindow, initialWindow
	go func() {
		var p [4]byte
		for {
			// WINDOW_UPDATE by hand: the Framer allocates one per frame.
			fh, err := c.fr.ReadFrameHeader()
			if err != nil {
				return
			}
			if fh.Type == http2.FrameWindowUpdate {
				if _, err := io.ReadFull(c.br, p[:]); err != nil {
					return
				}
				incr := int64(binary.BigEndian.Uint32(p[:]) & 0x7fffffff)
				mu.Lock()
				if fh.StreamID == 0 {
					connWin += incr
				} else {
					streamWin += incr
				}
				cond.Broadcast()
				mu.Unlock()
				continue
			}
			f, err := c.fr.ReadFrameForHeader(fh)
			if err != nil {
				return
			}
			mu.Lock()
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					streamWin += int64(v) - initialWindow
				}
			}
			cond.Broadcast()
			mu.Unlock()
		}
	}()
	if err := c.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "bench", ":path", "/upload"); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, frameSize)
	send := func() {
		mu.Lock()
		for connWin < frameSize || streamWin < frameSize {
			cond.Wait()
		}
		connWin -= frameSize
		streamWin -= frameSize
		mu.Unlock()
		c.mu.Lock()
		_ = c.fr.WriteData(1, false, payload)
		_ = c.bw.Flush()
		c.mu.Unlock()
	}
	for i := 0; i < 200; i++ { // warm the pools and the windows
		send()
	}
	b.SetBytes(frameSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		send()
	}
	b.StopTimer()
}

// benchHandler is a handler that costs next to nothing per stream: one
// stateless Stream for all, with the sidecar's default timeouts (a
// deadline 15 s out; the caller sets StreamIdleTimeout).
type benchHandler struct{ addr string }

func (h benchHandler) Open(*Request) (Stream, *Reply) { return benchStream(h), nil }

type benchStream struct{ addr string }

func (benchStream) Deadline() time.Time                     { return time.Now().Add(15 * time.Second) }
func (s benchStream) Attempt(int, *Header) (Target, *Reply) { return Target{Addr: s.addr}, nil }
func (benchStream) Retry(int, *Result, bool) bool           { return false }
func (benchStream) End(int, *Result)                        {}
func (benchStream) Reply(*Result) *Reply                    { return nil }
func (benchStream) Close()                                  {}

// BenchmarkRelayUnary measures the relay's cost per request: rounds of 16
// concurrent GET streams from a raw client, each answered by the upstream
// with a header and 100 bytes. One op is one request; allocs/op is the
// relay's (the client and the upstream skip hpack decoding and allocate
// nothing per request).
func BenchmarkRelayUnary(b *testing.B) {
	up := fakeUpstream(b, func(c *rawConn) {
		blk := c.block(":status", "200", "content-type", "text/plain", "content-length", "100")
		body := make([]byte, 100)
		for {
			fh, err := c.fr.ReadFrameHeader()
			if err != nil {
				return
			}
			if _, err := c.br.Discard(int(fh.Length)); err != nil {
				return
			}
			c.mu.Lock()
			switch {
			case fh.Type == http2.FrameSettings && fh.Flags&http2.FlagSettingsAck == 0:
				_ = c.fr.WriteSettingsAck()
			case fh.Type == http2.FrameHeaders && fh.Flags&http2.FlagHeadersEndStream != 0:
				_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: fh.StreamID, BlockFragment: blk, EndHeaders: true})
				_ = c.fr.WriteData(fh.StreamID, true, body)
			}
			if c.br.Buffered() == 0 { // answers go out once nothing more is buffered to read
				_ = c.bw.Flush()
			}
			c.mu.Unlock()
		}
	})
	relay, _ := startRelay(b, Config{StreamIdleTimeout: 5 * time.Minute}, benchHandler{up})
	c := dialRaw(b, relay)
	req := c.block(":method", "GET", ":scheme", "http", ":authority", "bench", ":path", "/", "user-agent", "bench", "accept", "*/*")
	done := make(chan struct{}, 16)
	var ended string
	go func() {
		defer close(done)
		var credit uint32
		for {
			fh, err := c.fr.ReadFrameHeader()
			if err != nil {
				return
			}
			if fh.Type == http2.FrameRSTStream || fh.Type == http2.FrameGoAway {
				f, err := c.fr.ReadFrameForHeader(fh)
				ended = fmt.Sprint(f, err)
				return
			}
			if _, err := c.br.Discard(int(fh.Length)); err != nil {
				return
			}
			if fh.Type != http2.FrameData {
				continue
			}
			// The connection window back (streams use little of theirs).
			if credit += fh.Length; credit >= 16<<10 {
				c.mu.Lock()
				_ = c.fr.WriteWindowUpdate(0, credit)
				_ = c.bw.Flush()
				c.mu.Unlock()
				credit = 0
			}
			if fh.Flags&http2.FlagDataEndStream != 0 {
				done <- struct{}{}
			}
		}
	}()
	id := uint32(1)
	round := func(n int) {
		c.mu.Lock()
		for i := 0; i < n; i++ {
			_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: req, EndStream: true, EndHeaders: true})
			id += 2
		}
		_ = c.bw.Flush()
		c.mu.Unlock()
		for i := 0; i < n; i++ {
			if _, ok := <-done; !ok {
				b.Fatal("relay connection ended: ", ended)
			}
		}
	}
	for i := 0; i < 20; i++ { // warm the pools, the tables and the windows
		round(16)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := b.N; n > 0; n -= 16 {
		round(min(n, 16))
	}
	b.StopTimer()
}
