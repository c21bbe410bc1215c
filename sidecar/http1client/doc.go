// Package http1client is the sidecar's lean HTTP/1.1 upstream client: an
// http.RoundTripper that writes the request and reads the response on the
// caller's goroutine over pooled connections, retries a request that meets
// a connection the server closed while idle (under net/http's replay
// rules), and hands what it does not handle (upgrades, Expect:
// 100-continue, bodies that cannot be replayed) to a fallback transport.
//
// It knows nothing of clusters, breakers or balancing: the sidecar passes a
// dial function that does the accounting.
//
// Concurrency: a Transport is safe for concurrent use.
package http1client
