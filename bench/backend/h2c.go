package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2cServer answers HTTP/2 without TLS (prior knowledge) at the frame
// level: every request gets 200 with the same body, whatever its method,
// path or body. It stands for a lean HTTP/2 application, so that the core
// it shares with the load generator goes to the proxy comparisons and not
// to net/http's handler model: one goroutine per connection, frames read
// and written through x/net/http2's Framer, writes flushed when no more
// input is buffered.
//
// It honours the client's flow control for what it sends (responses wait
// for WINDOW_UPDATE when the connection window is spent) and returns the
// window of request bodies as it reads them. It advertises
// MAX_CONCURRENT_STREAMS 1000.
type h2cServer struct {
	body  []byte
	block []byte // the response header block, encoded once (see newH2CServer)
}

func newH2CServer(body []byte) *h2cServer {
	// Stateless header block: :status 200 is in HPACK's static table;
	// the other fields are encoded as never-indexed literals, so the
	// block adds nothing to the peer's dynamic table and is valid on
	// every connection, every time.
	var blk bytes.Buffer
	enc := hpack.NewEncoder(&blk)
	for _, f := range []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "text/plain", Sensitive: true},
		{Name: "content-length", Value: strconv.Itoa(len(body)), Sensitive: true},
	} {
		if err := enc.WriteField(f); err != nil {
			panic(err) // writing to a bytes.Buffer does not fail
		}
	}
	return &h2cServer{body: body, block: blk.Bytes()}
}

func (s *h2cServer) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := s.serveConn(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Printf("backend: h2c %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// h2cConn is one connection's state; only its goroutine touches it.
type h2cConn struct {
	s          *h2cServer
	fr         *http2.Framer
	bw         *bufio.Writer
	sendWindow int64    // connection-level window for our DATA
	initWindow int64    // the client's SETTINGS_INITIAL_WINDOW_SIZE
	waiting    []uint32 // streams whose response waits for connection window
	open       map[uint32]bool
}

func (s *h2cServer) serveConn(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil {
		return err
	}
	if string(preface) != http2.ClientPreface {
		return fmt.Errorf("not an HTTP/2 prior-knowledge connection (first bytes %q)", preface)
	}
	_ = c.SetDeadline(time.Time{})
	br := bufio.NewReaderSize(c, 32<<10)
	bw := bufio.NewWriterSize(c, 32<<10)
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 64 << 10
	fr.SetReuseFrames()
	cn := &h2cConn{s: s, fr: fr, bw: bw, sendWindow: 65535, initWindow: 65535, open: map[uint32]bool{}}
	if err := fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20},
	); err != nil {
		return err
	}
	if err := fr.WriteWindowUpdate(0, 1<<30); err != nil {
		return err
	}
	for {
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if err := cn.handle(f); err != nil {
			_ = bw.Flush()
			return err
		}
	}
}

func (cn *h2cConn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
			cn.initWindow = int64(v)
		}
		return cn.fr.WriteSettingsAck()
	case *http2.MetaHeadersFrame:
		if f.StreamEnded() {
			return cn.respond(f.StreamID)
		}
		cn.open[f.StreamID] = true // the request has a body: answer at its end
	case *http2.DataFrame:
		if n := uint32(len(f.Data())); n > 0 {
			if err := cn.fr.WriteWindowUpdate(0, n); err != nil {
				return err
			}
			if !f.StreamEnded() {
				if err := cn.fr.WriteWindowUpdate(f.StreamID, n); err != nil {
					return err
				}
			}
		}
		if f.StreamEnded() && cn.open[f.StreamID] {
			delete(cn.open, f.StreamID)
			return cn.respond(f.StreamID)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			cn.sendWindow += int64(f.Increment)
			return cn.flushWaiting()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return cn.fr.WritePing(true, f.Data)
		}
	case *http2.RSTStreamFrame:
		delete(cn.open, f.StreamID)
		for i, id := range cn.waiting {
			if id == f.StreamID {
				cn.waiting = append(cn.waiting[:i], cn.waiting[i+1:]...)
				break
			}
		}
	case *http2.GoAwayFrame:
		return io.EOF
	}
	return nil
}

// respond answers a stream now, or queues it until the connection window
// allows its body.
func (cn *h2cConn) respond(id uint32) error {
	if len(cn.waiting) > 0 || cn.sendWindow < int64(len(cn.s.body)) {
		cn.waiting = append(cn.waiting, id)
		return nil
	}
	return cn.write(id)
}

func (cn *h2cConn) flushWaiting() error {
	for len(cn.waiting) > 0 && cn.sendWindow >= int64(len(cn.s.body)) {
		id := cn.waiting[0]
		cn.waiting = cn.waiting[1:]
		if err := cn.write(id); err != nil {
			return err
		}
	}
	return nil
}

func (cn *h2cConn) write(id uint32) error {
	if int64(len(cn.s.body)) > cn.initWindow {
		return fmt.Errorf("client's SETTINGS_INITIAL_WINDOW_SIZE %d is below the %d-byte body", cn.initWindow, len(cn.s.body))
	}
	if err := cn.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: cn.s.block, EndHeaders: true, EndStream: len(cn.s.body) == 0}); err != nil {
		return err
	}
	if len(cn.s.body) == 0 {
		return nil
	}
	cn.sendWindow -= int64(len(cn.s.body))
	return cn.fr.WriteData(id, true, cn.s.body)
}
