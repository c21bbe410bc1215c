package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/mtls/mtlstest"
	"github.com/sidemesh/sidemesh/xds"
)

// xds_server.tls: a client with a certificate of the CA reads the stream;
// one without a certificate is refused at the handshake.
func TestXDSServerTLS(t *testing.T) {
	ca := mtlstest.NewCA(t, testTD)
	dir := t.TempDir()
	cert, key, caf := ca.Files(t, dir, "xds")
	ep := filepath.Join(dir, "endpoints.yaml")
	writeFile(t, ep, endpointsYAML("api", "127.0.0.1:7001", 1))
	cfg, err := Parse("cp.yaml", []byte(fmt.Sprintf(`
discovery: {file: %q}
xds_server: {listen: 127.0.0.1:0, tls: {cert_file: %q, key_file: %q, ca_file: %q}}
upstreams:
  - {service: api}
`, ep, cert, key, caf)))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := NewControlPlane(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cp.Stop(ctx)
	})

	ccert, ckey, _ := ca.Files(t, t.TempDir(), "web")
	cli, err := xds.NewClient(xds.ClientConfig{Address: xds.AddressList{cp.Addr()}, NodeID: "web-1",
		TLS: &xds.TLSConfig{CAFile: caf, CertFile: ccert, KeyFile: ckey, ServerName: "localhost"}}, xds.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	got := make(chan *discovery.Snapshot, 1)
	cancel := cli.Watch("api", discovery.WatcherFuncs{Update: func(s *discovery.Snapshot) {
		select {
		case got <- s:
		default:
		}
	}})
	defer cancel()
	select {
	case s := <-got:
		if len(s.Endpoints) != 1 || s.Endpoints[0].Address != "127.0.0.1:7001" {
			t.Fatalf("snapshot %+v", s.Endpoints)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a client with a mesh certificate got no endpoints")
	}

	// No client certificate: the server refuses (TLS 1.3 reports it on the
	// first read).
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, err := tls.Dial("tcp", cp.Addr(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("a client without certificate was not refused: %v", err)
	}
}
