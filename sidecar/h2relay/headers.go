package h2relay

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerReader decodes a connection's header blocks (HEADERS and its
// CONTINUATION frames, read through the Framer) with one hpack decoder
// whose emit function is set once, into a scratch list: a block costs one
// allocation (its fields, copied out at their exact size) where the
// Framer's ReadMetaHeaders makes a closure, its captured state and a
// growing list for every block. It checks what ReadMetaHeaders checks
// (RFC 9113 §8.2 field names and values, pseudo fields first, known,
// not repeated, not request and response mixed; the header list size) and
// answers with the same errors.
type headerReader struct {
	dec       *hpack.Decoder
	max       uint32 // MaxHeaderListSize
	fields    []hpack.HeaderField
	remain    uint32 // header list budget left for the block
	trailers  uint32 // the budget of the "trailer" field's names
	regular   bool   // a regular field was seen
	invalid   error
	truncated bool
	meta      http2.MetaHeadersFrame // the frame handed out, reused
}

func (hr *headerReader) init(max uint32) {
	hr.max = max
	hr.dec = hpack.NewDecoder(4096, hr.emit)
	hr.dec.SetMaxStringLength(int(min(max, 1<<30)))
}

func (hr *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value is left out of the error: it may be sensitive.
		hr.invalid = fmt.Errorf("h2relay: invalid value of header field %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if hr.regular {
			hr.invalid = errPseudoAfterRegular
		}
	} else {
		hr.regular = true
		if !validFieldName(hf.Name) {
			hr.invalid = fmt.Errorf("h2relay: invalid header field name %q", hf.Name)
		}
	}
	if hr.invalid != nil {
		hr.dec.SetEmitEnabled(false)
		return
	}
	remain := &hr.remain
	size := hf.Size()
	if hf.Name == "trailer" {
		// Counted as the fields it names would be.
		remain = &hr.trailers
		n := uint32(strings.Count(hf.Value, ",") + 1)
		size = uint32(len(hf.Value)) - n + 1 + n*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		hr.dec.SetEmitEnabled(false)
		hr.truncated = true
		hr.remain, hr.trailers = 0, 0
		return
	}
	*remain -= size
	hr.fields = append(hr.fields, hf)
}

var errPseudoAfterRegular = errors.New("h2relay: pseudo header field after a regular one")

// validFieldName: a token in lower case (RFC 9113 §8.2.1).
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b >= 0x80 || !httpguts.IsTokenRune(rune(b)) || ('A' <= b && b <= 'Z') {
			return false
		}
	}
	return true
}

// readBlock reads the header block hf starts (its CONTINUATION frames
// from fr) and returns it decoded, valid until the next call.
func (hr *headerReader) readBlock(fr *http2.Framer, hf *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	hr.fields = hr.fields[:0]
	hr.remain, hr.trailers = hr.max, hr.max
	hr.regular, hr.invalid, hr.truncated = false, nil, false
	hr.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// A fragment far larger than the list may still grow is not
		// decoded: the connection ends (as after an invalid field).
		if int64(len(frag)) > 2*int64(hr.remain+hr.trailers) || hr.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := hr.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer checks the frame order
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := hr.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if hr.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: hr.invalid}
	}
	fields := make([]hpack.HeaderField, len(hr.fields))
	copy(fields, hr.fields)
	clear(hr.fields) // no strings kept alive by the scratch
	hr.meta = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: fields, Truncated: hr.truncated}
	if err := checkPseudos(hr.meta.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &hr.meta, nil
}

// checkPseudos: known pseudo fields, none repeated, not request and
// response ones mixed.
func checkPseudos(pf []hpack.HeaderField) error {
	var request, response bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			request = true
		case ":status":
			response = true
		default:
			return fmt.Errorf("h2relay: unknown pseudo header field %q", hf.Name)
		}
		for _, prev := range pf[:i] {
			if prev.Name == hf.Name {
				return fmt.Errorf("h2relay: repeated pseudo header field %q", hf.Name)
			}
		}
	}
	if request && response {
		return errors.New("h2relay: request and response pseudo header fields mixed")
	}
	return nil
}
