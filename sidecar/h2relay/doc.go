// Package h2relay is the sidecar's HTTP/2 engine: it relays HTTP/2 streams
// frame by frame between a downstream connection it serves and a small pool
// of upstream HTTP/2 client connections per endpoint, without net/http.
//
// It owns the HTTP/2 protocol work on both legs, built on
// golang.org/x/net/http2's Framer and hpack: the connection preface and
// SETTINGS, HEADERS/CONTINUATION (hpack decoded, validated per RFC 9113
// §8.2 and re-encoded with the embedder's edits), DATA relayed through
// pooled buffers, flow control on both legs (a stream's window on one leg is
// opened only as the other leg drains it, so a slow reader never makes the
// relay buffer without bound), RST_STREAM and GOAWAY mapped both ways
// (an upstream GOAWAY's unprocessed streams are offered for a retry),
// PING, and the abuse limits of a downstream connection (concurrent
// streams, header list size including CONTINUATION, rapid reset, and
// SETTINGS/PING/WINDOW_UPDATE floods).
//
// It does not own policy: which endpoint a stream goes to, whether an
// attempt is retried, header edits, timeouts, authorization, metrics and
// tracing are the embedder's, asked through Handler and Stream for every
// stream and attempt.
package h2relay
