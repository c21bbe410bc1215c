// Package http1 reads and checks HTTP/1.1 message heads in place, as a
// proxy must before it forwards them: the request line or status line and
// the header fields are located as slices of the read buffer (nothing is
// copied for a header the proxy does not touch), the limits on head size
// and header count are enforced, and every framing ambiguity a request
// smuggler relies on is refused (RFC 9112 §6, §11.2): Content-Length with
// Transfer-Encoding, differing Content-Length values, a transfer coding
// other than chunked, obs-fold, whitespace before the colon, invalid name
// or value bytes, a bare CR. Errors carry the status to answer (400, 431,
// 501, 505) and name the header or line at fault.
//
// It also owns the strict chunked body reader (sizes, extensions, CRLFs and
// trailers checked and bounded). It knows nothing of sockets or of the
// sidecar: the engine that serves connections is in package sidecar.
package http1
