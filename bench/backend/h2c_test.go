package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func startH2C(t *testing.T, body []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go newH2CServer(body).serve(ln)
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Go's own HTTP/2 client: GETs and POSTs with bodies, concurrently on one
// connection.
func TestH2CServerWithGoClient(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100)
	addr := startH2C(t, body)
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: p}}
	defer c.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp *http.Response
			var err error
			if i%2 == 0 {
				resp, err = c.Get("http://" + addr + "/any")
			} else {
				resp, err = c.Post("http://"+addr+"/upload", "application/octet-stream", bytes.NewReader(make([]byte, 200<<10)))
			}
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 2 || !bytes.Equal(got, body) || resp.Header.Get("Content-Length") != "100" {
				errs <- resp.Proto + " " + resp.Status + " " + string(got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// A raw client that never returns window: the server sends only as many
// 100-byte bodies as the connection's 65,535-byte window allows, and the
// rest once the client grants more. A PING's ack marks the point where the
// server has handled everything sent before it.
func TestH2CServerFlowControl(t *testing.T) {
	addr := startH2C(t, bytes.Repeat([]byte("x"), 100))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const n = 700
	for i := range n {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "bench"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
	}
	// countUntilPingAck reads frames until the ack of a PING sent now and
	// returns the bodies received.
	countUntilPingAck := func(tag byte) int {
		t.Helper()
		if err := fr.WritePing(false, [8]byte{tag}); err != nil {
			t.Fatal(err)
		}
		bodies := 0
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				if st := f.PseudoValue("status"); st != "200" {
					t.Fatalf("stream %d: :status %q", f.StreamID, st)
				}
			case *http2.DataFrame:
				if len(f.Data()) != 100 || !f.StreamEnded() {
					t.Fatalf("stream %d: DATA of %d bytes, end %t", f.StreamID, len(f.Data()), f.StreamEnded())
				}
				bodies++
			case *http2.PingFrame:
				if f.IsAck() && f.Data[0] == tag {
					return bodies
				}
			case *http2.GoAwayFrame:
				t.Fatalf("GOAWAY %v: %s", f.ErrCode, f.DebugData())
			}
		}
	}
	if got := countUntilPingAck(1); got != 65535/100 {
		t.Fatalf("%d bodies within the initial window, want %d", got, 65535/100)
	}
	if err := fr.WriteWindowUpdate(0, 100_000); err != nil {
		t.Fatal(err)
	}
	if got := countUntilPingAck(2); got != n-65535/100 {
		t.Fatalf("%d bodies after WINDOW_UPDATE, want the %d left", got, n-65535/100)
	}
}

func TestH2CServerRejectsHTTP1(t *testing.T) {
	s := newH2CServer([]byte("x"))
	a, b := net.Pipe()
	defer b.Close()
	done := make(chan error, 1)
	go func() { done <- s.serveConn(a) }()
	go io.WriteString(b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if err := <-done; err == nil || !strings.Contains(err.Error(), "not an HTTP/2 prior-knowledge connection") {
		t.Errorf("HTTP/1.1 request: err = %v, want one saying it is not HTTP/2", err)
	}
}
