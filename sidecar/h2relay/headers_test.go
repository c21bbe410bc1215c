package h2relay

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestReadBlock: header blocks decoded by the relay's own reader, split
// over CONTINUATION frames or not, with the errors ReadMetaHeaders gives.
func TestReadBlock(t *testing.T) {
	type field = hpack.HeaderField
	cases := []struct {
		name      string
		fields    []field
		split     int // fragment size (0: one frame)
		want      error
		truncated bool
	}{
		{name: "request", fields: []field{{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"}, {Name: "accept", Value: "*/*"}}},
		{name: "continued", fields: []field{{Name: ":status", Value: "200"}, {Name: "x-long", Value: strings.Repeat("v", 60)}}, split: 7},
		{name: "upper-case name", fields: []field{{Name: ":method", Value: "GET"}, {Name: "Accept", Value: "x"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "bad value", fields: []field{{Name: "x", Value: "a\x00b"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "pseudo after regular", fields: []field{{Name: "x", Value: "1"}, {Name: ":path", Value: "/"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "unknown pseudo", fields: []field{{Name: ":foo", Value: "1"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "repeated pseudo", fields: []field{{Name: ":path", Value: "/"}, {Name: ":path", Value: "/"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "mixed pseudo", fields: []field{{Name: ":status", Value: "200"}, {Name: ":path", Value: "/"}}, want: http2.StreamError{Code: http2.ErrCodeProtocol}},
		{name: "too large", fields: []field{{Name: ":status", Value: "200"}, {Name: "x", Value: strings.Repeat("v", 60)}, {Name: "y", Value: strings.Repeat("v", 60)}}, truncated: true},
		{name: "string longer than the list", fields: []field{{Name: "x", Value: strings.Repeat("v", 200)}}, want: http2.ConnectionError(http2.ErrCodeCompression)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var enc bytes.Buffer
			e := hpack.NewEncoder(&enc)
			for _, f := range tc.fields {
				_ = e.WriteField(f)
			}
			block := enc.Bytes()
			var wire bytes.Buffer
			w := http2.NewFramer(&wire, nil)
			frag := block
			if tc.split > 0 {
				frag = block[:tc.split]
			}
			_ = w.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndHeaders: len(frag) == len(block)})
			for rest := block[len(frag):]; len(rest) > 0; {
				n := min(tc.split, len(rest))
				_ = w.WriteContinuation(1, n == len(rest), rest[:n])
				rest = rest[n:]
			}
			fr := http2.NewFramer(nil, &wire)
			var hr headerReader
			hr.init(150)
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			mh, err := hr.readBlock(fr, f.(*http2.HeadersFrame))
			if ce, ok := tc.want.(http2.ConnectionError); ok {
				if !errors.Is(err, ce) {
					t.Fatalf("err %v, want %v", err, ce)
				}
				return
			}
			if tc.want != nil {
				var se http2.StreamError
				if !errors.As(err, &se) || se.Code != http2.ErrCodeProtocol || se.StreamID != 1 {
					t.Fatalf("err %v, want a PROTOCOL_ERROR stream error on stream 1", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if mh.Truncated != tc.truncated {
				t.Fatalf("truncated %v, want %v", mh.Truncated, tc.truncated)
			}
			if tc.truncated {
				return
			}
			if len(mh.Fields) != len(tc.fields) {
				t.Fatalf("fields %v, want %v", mh.Fields, tc.fields)
			}
			for i := range tc.fields {
				if mh.Fields[i].Name != tc.fields[i].Name || mh.Fields[i].Value != tc.fields[i].Value {
					t.Fatalf("fields %v, want %v", mh.Fields, tc.fields)
				}
			}
		})
	}
}
