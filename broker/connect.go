package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// checkFiles reads the credential files cfg names, so that a file that is
// not what its key says stops Connect with a message naming the key: the
// NATS client reads a credentials file only when it signs the server's
// nonce, and with a connection retried forever a bad one would never be
// reported.
func checkFiles(cfg Config) error {
	if cfg.Creds != "" {
		if err := checkCreds(cfg.Creds); err != nil {
			return fmt.Errorf("nats.creds: %s: %w", cfg.Creds, err)
		}
	}
	if cfg.TLS.CA != "" {
		pem, err := os.ReadFile(cfg.TLS.CA)
		if err != nil {
			return fmt.Errorf("nats.tls.ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("nats.tls.ca: %s: no PEM certificate in it", cfg.TLS.CA)
		}
	}
	if cfg.TLS.Cert != "" || cfg.TLS.Key != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key); err != nil {
			return fmt.Errorf("nats.tls.cert: %s with nats.tls.key %s: %w", cfg.TLS.Cert, cfg.TLS.Key, err)
		}
	}
	return nil
}

// checkCreds checks that path holds a user JWT and the seed of the key it
// was issued to (the file `nsc generate creds` writes). Errors never quote
// the file.
func checkCreds(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	tok, err := nkeys.ParseDecoratedJWT(data)
	if err != nil {
		return fmt.Errorf("not a credentials file: %w", err)
	}
	claims, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return errors.New("not a credentials file: no user JWT in it")
	}
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	if err != nil {
		return fmt.Errorf("not a credentials file: no user seed in it (%w)", err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return err
	}
	if pub != claims.Subject {
		return fmt.Errorf("the user JWT was issued to %s, the seed is %s's", claims.Subject, pub)
	}
	return nil
}
