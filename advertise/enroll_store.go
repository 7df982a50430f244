package advertise

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/renameio/v2"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
	"tailscale.com/tailcfg"
)

// errStoreFull: MaxKeys nodes have enrolled already.
var errStoreFull = errors.New("key store is full")

// storeFile is the JSON layout of the key store.
type storeFile struct {
	Version int           `json:"version"`
	Keys    []EnrolledKey `json:"keys"`
}

// keyStore is the loaded store: one key per node.
type keyStore struct {
	keys map[tailcfg.StableNodeID]EnrolledKey
}

// loadEnrolledKeys reads the key store at path; a missing file is empty.
// Keys that no longer parse are dropped.
func loadEnrolledKeys(path string) ([]EnrolledKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("key store %s: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("key store %s: unknown version %d", path, f.Version)
	}
	out := f.Keys[:0]
	for _, k := range f.Keys {
		if k.NodeID == "" {
			continue
		}
		if _, err := wire.ParseEnrollKey(k.PublicKey); err != nil {
			continue
		}
		out = append(out, k)
	}
	return out, nil
}

// saveEnrolledKeys writes keys to path atomically (a temporary file in
// the same directory, fsynced, then renamed), mode 0600.
func saveEnrolledKeys(path string, keys []EnrolledKey) error {
	slices.SortFunc(keys, func(a, b EnrolledKey) int { return strings.Compare(string(a.NodeID), string(b.NodeID)) })
	b, err := json.MarshalIndent(storeFile{Version: 1, Keys: keys}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	if err := renameio.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	return nil
}

// load reads the store once; e.mu is held.
func (e *Enroller) load() error {
	if e.store != nil {
		return nil
	}
	if e.StorePath == "" {
		return errors.New("key store: no StorePath")
	}
	keys, err := loadEnrolledKeys(e.StorePath)
	if err != nil {
		return err
	}
	s := &keyStore{keys: map[tailcfg.StableNodeID]EnrolledKey{}}
	for _, k := range keys {
		s.keys[k.NodeID] = k
	}
	e.store = s
	return nil
}

// put stores k as its node's key and saves the store. It returns the
// fingerprint of the key it replaced, if any.
func (e *Enroller) put(k EnrolledKey) (replaced string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.load(); err != nil {
		return "", err
	}
	max := e.MaxKeys
	if max <= 0 {
		max = DefaultEnrollMaxKeys
	}
	old, had := e.store.keys[k.NodeID]
	if !had && len(e.store.keys) >= max {
		return "", fmt.Errorf("%w (%d nodes)", errStoreFull, max)
	}
	e.store.keys[k.NodeID] = k
	if err := saveEnrolledKeys(e.StorePath, e.snapshot()); err != nil {
		if had {
			e.store.keys[k.NodeID] = old
		} else {
			delete(e.store.keys, k.NodeID)
		}
		return "", err
	}
	e.gen++ // the next ValidKeys sees the new key at once
	if had {
		if pk, err := wire.ParseEnrollKey(old.PublicKey); err == nil {
			replaced = ssh.FingerprintSHA256(pk)
		}
	}
	return replaced, nil
}

// snapshot copies the stored keys; e.mu is held.
func (e *Enroller) snapshot() []EnrolledKey {
	out := make([]EnrolledKey, 0, len(e.store.keys))
	for _, k := range e.store.keys {
		out = append(out, k)
	}
	return out
}

// Keys returns every stored key, valid or not, sorted by node ID.
func (e *Enroller) Keys() ([]EnrolledKey, error) {
	keys, _, err := e.keysGen()
	return keys, err
}

// keysGen returns the stored keys and the store's generation, which
// every change bumps.
func (e *Enroller) keysGen() ([]EnrolledKey, uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.load(); err != nil {
		return nil, 0, err
	}
	keys := e.snapshot()
	slices.SortFunc(keys, func(a, b EnrolledKey) int { return strings.Compare(string(a.NodeID), string(b.NodeID)) })
	return keys, e.gen, nil
}

// generation returns the store's generation.
func (e *Enroller) generation() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gen
}
