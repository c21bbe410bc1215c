package mtls

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Files is an identity from files (cert-manager, SPIRE's helper): a PEM
// leaf chain, its key and the CA bundle.
type Files struct {
	CertFile, KeyFile, CAFile string
}

// Load reads the three files into a Material.
func (f Files) Load() (*Material, error) {
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("mtls.cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("mtls.key_file: %w", err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("mtls.ca_file: %w", err)
	}
	roots, err := ParseRoots(caPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls.ca_file %s: %w", f.CAFile, err)
	}
	m, err := NewMaterial(certPEM, keyPEM, roots, "")
	if err != nil {
		return nil, fmt.Errorf("mtls.cert_file %s: %w", f.CertFile, err)
	}
	return m, nil
}

// stamp identifies the files' versions (modification time and size).
func (f Files) stamp() string {
	s := ""
	for _, p := range []string{f.CertFile, f.KeyFile, f.CAFile} {
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		} else {
			s += "-;"
		}
	}
	return s
}

// FilePollInterval is how often Watch looks for changed files.
const FilePollInterval = 2 * time.Second

// Watch loads f into store now (an error is returned and nothing runs) and
// then, until ctx ends, reloads it whenever the files change, checking
// every interval (0: FilePollInterval). A bad new version is logged and
// the previous one stays in force (a rotation writes the files one by one).
func (f Files) Watch(ctx context.Context, store *Store, interval time.Duration, log *slog.Logger) error {
	if interval <= 0 {
		interval = FilePollInterval
	}
	st := f.stamp()
	m, err := f.Load()
	if err != nil {
		return err
	}
	store.Set(m)
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			now := f.stamp()
			if now == st {
				continue
			}
			m, err := f.Load()
			if err != nil {
				log.Warn("mtls: certificate files changed but do not load; keeping the previous ones", "err", err)
				continue
			}
			st = now
			store.Set(m)
			log.Info("mtls: certificate files reloaded", "identity", m.ID.String(), "serial", m.Serial(), "not_after", m.NotAfter())
		}
	}()
	return nil
}
