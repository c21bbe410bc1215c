package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// maxDrain is how much of a response body a check reads so that the
// connection can be reused; a longer body closes the connection instead.
const maxDrain = 64 << 10

// defaultExpected is Envoy's default expected_statuses: 200 only.
var defaultExpected = []StatusRange{{Start: 200, End: 201}}

// httpProber GETs the path over HTTP/1.1 on a connection of its own that it
// keeps between checks (Envoy's reuse_connection, default true) and drops
// after any failure. Redirects are not followed.
type httpProber struct {
	url       string
	host      string
	expected  []StatusRange
	retriable []StatusRange
	transport *http.Transport
	client    *http.Client
}

func newHTTPProber(addr string, cfg *HTTPCheck, timeout time.Duration, serviceName string) *httpProber {
	host := cfg.Host
	if host == "" {
		host = serviceName
	}
	if host == "" {
		host = addr
	}
	expected := cfg.ExpectedStatuses
	if len(expected) == 0 {
		expected = defaultExpected
	}
	tr := &http.Transport{
		// Proxy stays nil: checks go to the endpoint, never via HTTP_PROXY.
		DialContext:         (&net.Dialer{Timeout: timeout}).DialContext,
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &httpProber{
		url:       "http://" + addr + cfg.Path,
		host:      host,
		expected:  expected,
		retriable: cfg.RetriableStatuses,
		transport: tr,
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

func (p *httpProber) probe(ctx context.Context) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		// The URL comes from a validated path and an address; a bad one
		// will never pass, so say so at once.
		return result{verdict: failImmediate, err: fmt.Errorf("health: building request: %w", err)}
	}
	req.Host = p.host
	req.Header.Set("User-Agent", UserAgent)
	resp, err := p.client.Do(req)
	if err != nil {
		p.transport.CloseIdleConnections()
		return result{verdict: failCounted, err: err}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	_ = resp.Body.Close()

	code := resp.StatusCode
	switch {
	case inRanges(code, p.expected):
		return result{verdict: pass}
	case inRanges(code, p.retriable):
		p.transport.CloseIdleConnections()
		return result{verdict: failCounted, err: fmt.Errorf("%w: %d (retriable)", ErrUnexpectedStatus, code)}
	default:
		p.transport.CloseIdleConnections()
		return result{verdict: failImmediate, err: fmt.Errorf("%w: %d", ErrUnexpectedStatus, code)}
	}
}

func (p *httpProber) close() { p.transport.CloseIdleConnections() }
