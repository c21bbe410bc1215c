package xds

import "errors"

// Errors of this package. They are wrapped with %w and context.
var (
	// ErrInvalidSettings: upstream settings that cannot be translated.
	ErrInvalidSettings = errors.New("xds: invalid cluster settings")
	// ErrTranslate: part of the input could not be expressed in xDS.
	ErrTranslate = errors.New("xds: translation")
	// ErrInvalidResource: a received resource was rejected (NACKed).
	ErrInvalidResource = errors.New("xds: invalid resource")
	// ErrInconsistent: a snapshot refers to resources it does not hold.
	ErrInconsistent = errors.New("xds: inconsistent snapshot")
	// ErrClosed: the client or server was closed.
	ErrClosed = errors.New("xds: closed")
	// ErrConfig: invalid client configuration.
	ErrConfig = errors.New("xds: invalid config")
)
