package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// ChunkedReader decodes a chunked body (RFC 9112 §7.1) strictly: sizes
// are hex without sign or overflow, extensions hold only field-value
// bytes, every line and chunk ends in CRLF, and the trailer section
// follows the header rules and limits. Its Read returns the data; after
// io.EOF, Trailers holds the trailer fields (copied: valid after the
// reader's buffer moves on).
type ChunkedReader struct {
	r     *bufio.Reader
	lim   Limits
	left  int64 // data bytes left in the current chunk
	state uint8
	err   error

	Trailers []Field
	trailer  []byte // the trailer section's bytes, owned
}

const (
	chunkSize uint8 = iota // at a chunk-size line
	chunkData              // inside chunk data
	chunkEnd               // after chunk data: its CRLF
	chunkDone
)

// ErrLineTooLong: a chunk-size line longer than the reader's buffer.
var errChunkLine = &Error{Status: 400, Reason: "chunk-size line too long"}

// NewChunkedReader reads a chunked body from r; lim bounds the trailers.
func NewChunkedReader(r *bufio.Reader, lim Limits) *ChunkedReader {
	return &ChunkedReader{r: r, lim: lim}
}

// Reset makes c read a new body from r, keeping its buffers.
func (c *ChunkedReader) Reset(r *bufio.Reader, lim Limits) {
	tr, t := c.Trailers[:0], c.trailer[:0]
	*c = ChunkedReader{r: r, lim: lim, Trailers: tr, trailer: t}
}

func (c *ChunkedReader) Read(p []byte) (int, error) {
	for c.err == nil {
		switch c.state {
		case chunkSize:
			c.err = c.sizeLine()
		case chunkEnd:
			c.err = c.crlf()
			c.state = chunkSize
		case chunkDone:
			return 0, io.EOF
		case chunkData:
			if len(p) == 0 {
				return 0, nil
			}
			if int64(len(p)) > c.left {
				p = p[:c.left]
			}
			n, err := c.r.Read(p)
			c.left -= int64(n)
			if c.left == 0 {
				c.state = chunkEnd
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			c.err = err
			if n > 0 {
				return n, nil
			}
		}
	}
	return 0, c.err
}

func (c *ChunkedReader) sizeLine() error {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return errChunkLine
		}
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return errorf(400, "chunk-size line not ended by CRLF")
	}
	line = line[:len(line)-2]
	ext := bytes.IndexByte(line, ';')
	size := line
	if ext >= 0 {
		size = line[:ext]
		for _, b := range line[ext:] {
			if !fieldValueByte(b) {
				return errorf(400, "invalid byte %#02x in a chunk extension", b)
			}
		}
	}
	if len(size) == 0 || len(size) > 15 {
		return errorf(400, "invalid chunk size %q", clip(size))
	}
	var n int64
	for _, b := range size {
		var d byte
		switch {
		case '0' <= b && b <= '9':
			d = b - '0'
		case 'a' <= b && b <= 'f':
			d = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			d = b - 'A' + 10
		default:
			return errorf(400, "invalid chunk size %q", clip(size))
		}
		n = n<<4 | int64(d)
	}
	if n == 0 {
		return c.trailers()
	}
	c.left, c.state = n, chunkData
	return nil
}

func (c *ChunkedReader) crlf() error {
	b, err := c.r.Peek(2)
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errorf(400, "chunk data not followed by CRLF")
	}
	_, _ = c.r.Discard(2)
	return nil
}

// trailers reads the trailer section up to its empty line and checks it
// as a header section.
func (c *ChunkedReader) trailers() error {
	c.trailer = c.trailer[:0]
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return errorf(431, "trailer line too long")
			}
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return errorf(400, "trailer line not ended by CRLF")
		}
		c.trailer = append(c.trailer, line...)
		if c.lim.MaxHeaderBytes > 0 && len(c.trailer) > c.lim.MaxHeaderBytes {
			return errorf(431, "trailers larger than %d bytes", c.lim.MaxHeaderBytes)
		}
		if len(line) == 2 {
			break
		}
	}
	var h Head
	h.Reset()
	h.Fields = c.Trailers[:0]
	if err := h.parseTrailers(c.trailer, c.lim); err != nil {
		return err
	}
	c.Trailers = h.Fields
	c.state = chunkDone
	return nil
}
