package consul

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// firstQuery watches "api" through a source built from cfg against h and
// returns the first query h saw.
func firstQuery(t *testing.T, cfg Config, h *scripted) seenQuery {
	t.Helper()
	src, err := New(cfg, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer src.Close()
	defer src.Watch("api", &recorder{})()
	testenv.Eventually(t, 5*time.Second, "a query", func() error {
		if len(h.queries()) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	return h.queries()[0]
}

func TestTokenSources(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		token    string
		file     string
		env      string
		wantSent string
	}{
		{"token", "from-config", "", "from-env", "from-config"},
		{"token_file, trimmed", "", tokenFile, "from-env", "from-file"},
		{"CONSUL_HTTP_TOKEN", "", "", "from-env", "from-env"},
		{"none", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CONSUL_HTTP_TOKEN", tt.env)
			h := newScripted(sequence(reply{index: 1}, reply{hang: true}))
			srv := httptest.NewServer(h)
			defer srv.Close()
			q := firstQuery(t, Config{Address: srv.Listener.Addr().String(), Token: tt.token, TokenFile: tt.file}, h)
			if q.token != tt.wantSent {
				t.Errorf("sent token %q, want %q", q.token, tt.wantSent)
			}
		})
	}
}

func TestTLSWithCAFile(t *testing.T) {
	h := newScripted(sequence(reply{index: 1, entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 7001, 1, 1)}}, reply{hang: true}))
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	// ca_file alone switches to https and trusts the server.
	src, err := New(Config{Address: srv.Listener.Addr().String(), CAFile: ca}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rec := &recorder{}
	defer src.Watch("api", rec)()
	testenv.Eventually(t, 5*time.Second, "a snapshot over TLS", func() error {
		if rec.last() == nil {
			_, amb, _ := rec.state()
			return fmt.Errorf("no snapshot; ambient errors %v", amb)
		}
		return nil
	})
}

func TestTLSBadFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []Config{
		{Address: "127.0.0.1:8501", CAFile: missing},
		{Address: "127.0.0.1:8501", CertFile: missing, KeyFile: missing},
	}
	for _, cfg := range tests {
		if _, err := New(cfg, Options{}); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}
