package h2relay

import (
	"encoding/binary"
	"io"
	"sync"
	"testing"

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
