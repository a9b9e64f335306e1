package broker_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/internal/poll"
)

// pki is a CA and the files of certificates it signed, made for one test.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	CA   string // the CA certificate's PEM file
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	p.cert, p.key = p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}, nil, nil)
	p.CA = p.write(t, "ca.pem", "CERTIFICATE", p.cert.Raw)
	return p
}

// issue signs tmpl with parent's key (self-signed when parent is nil).
func (p *pki) issue(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// leaf issues a certificate for usage and returns its PEM cert and key files.
func (p *pki) leaf(t *testing.T, name string, usage x509.ExtKeyUsage, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	cert, key := p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}, p.cert, p.key)
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".pem", "CERTIFICATE", cert.Raw), p.write(t, name+"-key.pem", "EC PRIVATE KEY", der)
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConnectTLS: a server that requires TLS and verifies client
// certificates is reached with nats.tls.{ca,cert,key}, and refused without
// the client certificate or without the CA that signed the server's.
func TestConnectTLS(t *testing.T) {
	t.Parallel()
	ca := newPKI(t, "understudy test CA")
	serverCert, serverKey := ca.leaf(t, "server", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	clientCert, clientKey := ca.leaf(t, "client", x509.ExtKeyUsageClientAuth)
	stranger := newPKI(t, "another CA")
	strangerCert, strangerKey := stranger.leaf(t, "stranger", x509.ExtKeyUsageClientAuth)

	srv := startServer(t, func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: serverCert, KeyFile: serverKey, CaFile: ca.CA, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = tc, true, true, 2
	})
	url := srv.ClientURL()
	tlsURL := strings.Replace(url, "nats://", "tls://", 1)

	for _, c := range []struct {
		name string
		url  string
	}{{"nats:// URL", url}, {"tls:// URL", tlsURL}} {
		t.Run(c.name, func(t *testing.T) {
			cfg := broker.Config{URL: c.url, TLS: broker.TLSConfig{CA: ca.CA, Cert: clientCert, Key: clientKey}}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			roundTrip(t, connected(t, cfg, "test"))
		})
	}
	t.Run("no client certificate", func(t *testing.T) {
		// "remote error: tls: certificate required", or, when the server
		// closes first, "connection closed by remote after TLS handshake".
		refused(t, broker.Config{URL: tlsURL, TLS: broker.TLSConfig{CA: ca.CA}}, "remote")
	})
	t.Run("client certificate of another CA", func(t *testing.T) {
		refused(t, broker.Config{URL: tlsURL, TLS: broker.TLSConfig{CA: ca.CA, Cert: strangerCert, Key: strangerKey}}, "remote") // refused after the handshake (TLS 1.3) or in it
	})
	t.Run("server not verified without its CA", func(t *testing.T) {
		refused(t, broker.Config{URL: tlsURL, TLS: broker.TLSConfig{Cert: clientCert, Key: clientKey}}, "unknown authority")
	})
	t.Run("server not verified by another CA", func(t *testing.T) {
		refused(t, broker.Config{URL: tlsURL, TLS: broker.TLSConfig{CA: stranger.CA, Cert: clientCert, Key: clientKey}}, "unknown authority")
	})
}

// operator is a decentralised-auth setup made for one test: an operator, a
// system account and an application account with JetStream enabled.
type operator struct {
	claims   *jwt.OperatorClaims
	resolver *server.MemAccResolver
	sysPub   string
	acctKP   nkeys.KeyPair
}

func newOperator(t *testing.T) *operator {
	t.Helper()
	opKP, err := nkeys.CreateOperator()
	must(t, err)
	opPub, err := opKP.PublicKey()
	must(t, err)
	op := &operator{claims: jwt.NewOperatorClaims(opPub), resolver: &server.MemAccResolver{}}
	op.claims.Name = "test operator"
	account := func(name string, js bool) (nkeys.KeyPair, string) {
		kp, err := nkeys.CreateAccount()
		must(t, err)
		pub, err := kp.PublicKey()
		must(t, err)
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(opKP)
		must(t, err)
		must(t, op.resolver.Store(pub, tok))
		return kp, pub
	}
	_, op.sysPub = account("SYS", false)
	op.claims.SystemAccount = op.sysPub
	op.acctKP, _ = account("APP", true)
	return op
}

func (op *operator) configure(o *server.Options) {
	o.TrustedOperators = []*jwt.OperatorClaims{op.claims}
	o.AccountResolver = op.resolver
	o.SystemAccount = op.sysPub
}

// creds writes a credentials file for a new user of the application
// account, signed by signer (the account's key unless another is given).
func (op *operator) creds(t *testing.T, signer nkeys.KeyPair) string {
	t.Helper()
	if signer == nil {
		signer = op.acctKP
	}
	ukp, err := nkeys.CreateUser()
	must(t, err)
	upub, err := ukp.PublicKey()
	must(t, err)
	uc := jwt.NewUserClaims(upub)
	uc.Name = "worker"
	tok, err := uc.Encode(signer)
	must(t, err)
	seed, err := ukp.Seed()
	must(t, err)
	file, err := jwt.FormatUserConfig(tok, seed)
	must(t, err)
	path := filepath.Join(t.TempDir(), "worker.creds")
	must(t, os.WriteFile(path, file, 0o600))
	return path
}

// TestConnectCredsFile: a server in operator mode (JWT accounts, a memory
// resolver) is reached with nats.creds, and refused with the credentials of
// a user no trusted account signed.
func TestConnectCredsFile(t *testing.T) {
	t.Parallel()
	op := newOperator(t)
	srv := startServer(t, op.configure)
	url := srv.ClientURL()
	t.Run("valid credentials", func(t *testing.T) {
		cfg := broker.Config{URL: url, Creds: op.creds(t, nil)}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Validate: %v", err)
		}
		roundTrip(t, connected(t, cfg, "test"))
	})
	t.Run("user of an unknown account", func(t *testing.T) {
		other, err := nkeys.CreateAccount()
		must(t, err)
		creds := op.creds(t, other)
		refused(t, broker.Config{URL: url, Creds: creds}, "Authorization Violation", seedOf(t, creds))
	})
	t.Run("no credentials", func(t *testing.T) {
		refused(t, broker.Config{URL: url}, "Authorization Violation")
	})
}

// seedOf is the user seed in a credentials file: a secret no message may show.
func seedOf(t *testing.T, creds string) string {
	t.Helper()
	data, err := os.ReadFile(creds)
	must(t, err)
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	must(t, err)
	seed, err := kp.Seed()
	must(t, err)
	return string(seed)
}

// TestConnectBadCredentialFiles: a file that is not what its key says stops
// Connect at once with a message naming the key, instead of a connection
// retried forever.
func TestConnectBadCredentialFiles(t *testing.T) {
	t.Parallel()
	ca := newPKI(t, "understudy test CA")
	cert, key := ca.leaf(t, "client", x509.ExtKeyUsageClientAuth)
	_, otherKey := ca.leaf(t, "other", x509.ExtKeyUsageClientAuth)
	garbage := filepath.Join(t.TempDir(), "garbage")
	must(t, os.WriteFile(garbage, []byte("not a key, not a certificate"), 0o600))
	url := "nats://" + closedPort(t)
	for _, c := range []struct {
		name, key string
		cfg       broker.Config
	}{
		{"creds file is a certificate", "nats.creds", broker.Config{Creds: cert}},
		{"creds file is garbage", "nats.creds", broker.Config{Creds: garbage}},
		{"ca is a private key", "nats.tls.ca", broker.Config{TLS: broker.TLSConfig{CA: key}}},
		{"ca is garbage", "nats.tls.ca", broker.Config{TLS: broker.TLSConfig{CA: garbage}}},
		{"cert and key do not match", "nats.tls.cert", broker.Config{TLS: broker.TLSConfig{Cert: cert, Key: otherKey}}},
		{"cert is garbage", "nats.tls.cert", broker.Config{TLS: broker.TLSConfig{Cert: garbage, Key: key}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.URL = url
			b, err := broker.Connect(testCtx(t), c.cfg, "test", zerolog.Nop())
			if err == nil {
				b.Close()
				t.Fatalf("Connect succeeded, want an error naming %s", c.key)
			}
			if !strings.HasPrefix(err.Error(), c.key+": ") {
				t.Errorf("Connect error %q does not start with %q", err, c.key+": ")
			}
		})
	}
}

// refused asserts that cfg gets no working connection and that both the
// process's log and WaitConnected's error say why (reason), without any of
// secrets.
func refused(t *testing.T, cfg broker.Config, reason string, secrets ...string) {
	t.Helper()
	var logs syncBuffer
	b, err := broker.Connect(testCtx(t), cfg, "test", zerolog.New(&logs))
	if err != nil {
		t.Fatalf("Connect: %v (the server is reachable: it must be retried, not refused at once)", err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(testCtx(t), 700*time.Millisecond)
	defer cancel()
	err = b.WaitConnected(ctx)
	t.Log(err)
	if err == nil {
		t.Fatalf("WaitConnected succeeded; want a refusal (%s)", reason)
	}
	if !strings.Contains(err.Error(), reason) {
		t.Errorf("WaitConnected error %q does not say why (%q)", err, reason)
	}
	poll.Until(t, 5*time.Second, "a log line saying why the connection is refused ("+reason+")",
		func() bool { return strings.Contains(logs.String(), reason) })
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) || strings.Contains(logs.String(), s) {
			t.Errorf("a secret is shown: error %q, log %s", err, logs.String())
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
