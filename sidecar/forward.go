package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
)

// forward sends r (a copy of it with ctx; its header is edited in place)
// over the cluster transport and relays the answer:
// interim 1xx responses, the final head without hop-by-hop fields, the
// body (flushed as it comes when its length is unknown), trailers, and an
// upgraded connection after a 101. An error before any answer becomes a
// local reply (localreply.go); an upstream that fails mid-body aborts the
// downstream response (http.ErrAbortHandler), so the client sees a broken
// response rather than a short one that looks whole.
func (h *upstreamHandler) forward(w http.ResponseWriter, in *http.Request, ctx context.Context) {
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
			if code == http.StatusSwitchingProtocols {
				return nil
			}
			rh := w.Header()
			for k, vv := range hdr {
				rh[k] = vv
			}
			w.WriteHeader(code)
			for k := range hdr {
				delete(rh, k) // an interim head's fields are its own
			}
			return nil
		},
	})
	r := in.WithContext(ctx) // its URL is edited in place too: the engine's, reset per request
	up := upgradeType(r.Header)
	te := hasToken(r.Header["Te"], "trailers")
	removeHopByHop(r.Header)
	if up != "" {
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{up}
	}
	if te {
		r.Header["Te"] = []string{"trailers"} // gRPC needs it end to end
	}
	setForwarded(r)
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = emptyValue // net/http's Transport would add its own
	}
	if _, ok := r.Header["X-Request-Id"]; !ok {
		r.Header["X-Request-Id"] = []string{newRequestID()}
	}
	r.URL.Scheme, r.URL.Host = "http", r.Host
	r.RequestURI, r.Close = "", false
	if r.ContentLength == 0 {
		r.Body = nil // no body: the transport may retry on a fresh connection
	}
	resp, err := h.t.RoundTrip(r)
	if err != nil {
		if h.log.Enabled(ctx, slog.LevelDebug) {
			h.log.Debug("local reply", "err", err, "path", r.URL.Path)
		}
		writeLocalReply(w, r, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		h.relayUpgrade(w, r, resp, up)
		return
	}
	removeHopByHop(resp.Header)
	rh := w.Header()
	for k, vv := range resp.Header {
		rh[k] = vv
	}
	if n := len(resp.Trailer); n > 0 {
		keys := make([]string, 0, n)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		rh["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	flush := resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	err = copyBody(w, resp.Body, flush)
	_ = resp.Body.Close()
	if err != nil {
		if errors.Is(err, errUpstreamBody) {
			panic(http.ErrAbortHandler)
		}
		return // the client went away
	}
	if len(resp.Trailer) > 0 {
		// Trailers arrive with the end of the body; those announced go
		// under their names, any others with http.TrailerPrefix.
		announced := rh["Trailer"]
		for k, vv := range resp.Trailer {
			if announced != nil && hasToken(announced, k) {
				rh[k] = vv
			} else {
				rh[http.TrailerPrefix+k] = vv
			}
		}
	}
}

var emptyValue = []string{""}

// errUpstreamBody: reading the upstream's body failed.
var errUpstreamBody = errors.New("upstream body")

// copyBody relays a response body through a pooled buffer; flush sends
// every piece at once (a body of unknown length may be a stream).
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	buf := proxyBuffers.Get()
	defer proxyBuffers.Put(buf)
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return errUpstreamBody
		}
	}
}

// relayUpgrade answers a 101 and relays the upgraded connection both ways
// until either side ends it.
func (h *upstreamHandler) relayUpgrade(w http.ResponseWriter, r *http.Request, resp *http.Response, up string) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		_ = resp.Body.Close()
		writeLocalReply(w, r, &upstreamError{kind: failReset, err: errBadUpgrade})
		return
	}
	defer back.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.log.Debug("upgrade: cannot take over the connection", "err", err)
		writeLocalReply(w, r, &upstreamError{kind: failReset, err: err})
		return
	}
	defer conn.Close()
	removeHopByHop(resp.Header)
	resp.Header["Connection"] = []string{"Upgrade"}
	resp.Header["Upgrade"] = []string{up}
	resp.Body = nil
	if err := resp.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	if n := brw.Reader.Buffered(); n > 0 { // the client spoke first
		b, _ := brw.Reader.Peek(n)
		if _, err := back.Write(b); err != nil {
			return
		}
	}
	stop := context.AfterFunc(r.Context(), func() { conn.Close(); back.Close() })
	defer stop()
	// The first side to end ends both (as ReverseProxy does): a
	// half-close cannot be passed on through every upstream body.
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(back, conn); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, back); done <- struct{}{} }()
	<-done
	_ = conn.Close()
	_ = back.Close()
	<-done
}

// removeHopByHop deletes the fields that belong to one connection
// (RFC 9110 §7.6.1): those Connection names, and the standard ones.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var k string
			k, v, _ = cut(v, ',')
			if k = textproto.TrimString(k); k != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(k))
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// setForwarded sets X-Forwarded-For (the client's address appended to
// what came), -Host and -Proto, after the hop-by-hop fields are gone
// (a client cannot strip ours by naming them in Connection).
func setForwarded(r *http.Request) {
	h := r.Header
	v := make([]string, 2) // one allocation for both values
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		v[0] = ip
		h["X-Forwarded-For"] = v[0:1:1]
	} else {
		delete(h, "X-Forwarded-For")
	}
	if r.Host != "" {
		v[1] = r.Host
		h["X-Forwarded-Host"] = v[1:2:2]
	} else {
		delete(h, "X-Forwarded-Host")
	}
	if r.TLS != nil {
		h["X-Forwarded-Proto"] = protoHTTPS
	} else {
		h["X-Forwarded-Proto"] = protoHTTP
	}
}

var protoHTTP, protoHTTPS = []string{"http"}, []string{"https"}
