package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
)

// ErrStoreInUse is returned when another process's embedded server holds
// the store directory: two servers writing one store would corrupt it.
var ErrStoreInUse = errors.New("the store is in use by another process")

// storeLockFile is the file under the store directory whose lock an
// embedded server holds while it runs.
const storeLockFile = "understudy.lock"

// lockStore takes the store directory's lock for an embedded server,
// creating the directory when needed; release gives it back.
func lockStore(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded NATS server: store %s: %w", dir, err)
	}
	path := filepath.Join(dir, storeLockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: store %s: %w", dir, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("embedded NATS server: store %s: %w", dir, err)
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}

// OpenStore starts an embedded server of this process's own on cfg's store
// directory — not listening on the network, reached in-process — and
// connects to it: `replay` of a deployment whose `serve` is stopped. The
// directory must exist (a mistyped path does not create an empty store);
// a store held by a running server is ErrStoreInUse.
func OpenStore(ctx context.Context, cfg Config, name string, log zerolog.Logger) (*Broker, error) {
	cfg.SetDefaults()
	st, err := os.Stat(cfg.StoreDir)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", cfg.StoreDir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("store %s: not a directory", cfg.StoreDir)
	}
	cfg.URL, cfg.Listen = "", "-"
	return Connect(ctx, cfg, name, log)
}
