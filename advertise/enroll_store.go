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
	"time"

	"github.com/google/renameio/v2"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
	"tailscale.com/tailcfg"
)

// errStoreFull: MaxKeys nodes with valid keys have enrolled already.
var errStoreFull = errors.New("key store is full")

// errKeyTaken: another node enrolled this public key already. Two nodes
// sharing one key would keep it valid while either keeps its tag.
var errKeyTaken = errors.New("this public key is enrolled by another node")

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
	for id, other := range e.store.keys {
		if id != k.NodeID && other.PublicKey == k.PublicKey {
			return "", fmt.Errorf("%w (%s)", errKeyTaken, other.NodeName)
		}
	}
	old, had := e.store.keys[k.NodeID]
	var evicted EnrolledKey
	var evict bool
	if !had && len(e.store.keys) >= max {
		evicted, evict = e.evictable()
		if !evict {
			return "", fmt.Errorf("%w (%d nodes with valid keys)", errStoreFull, max)
		}
		delete(e.store.keys, evicted.NodeID)
	}
	e.store.keys[k.NodeID] = k
	if err := saveEnrolledKeys(e.StorePath, e.snapshot()); err != nil {
		if had {
			e.store.keys[k.NodeID] = old
		} else {
			delete(e.store.keys, k.NodeID)
		}
		if evict {
			e.store.keys[evicted.NodeID] = evicted
		}
		return "", err
	}
	if evict {
		e.logger().Info("evicted an invalid key for a new node", "node", evicted.NodeName, "node_id", evicted.NodeID,
			"invalid_since", e.invalidSince[evicted.NodeID], "for", k.NodeName)
		delete(e.invalidSince, evicted.NodeID)
		delete(e.gone, evicted.NodeID)
	}
	e.gen++ // the next ValidKeys sees the new key at once
	if had {
		if pk, err := wire.ParseEnrollKey(old.PublicKey); err == nil {
			replaced = ssh.FingerprintSHA256(pk)
		}
	}
	return replaced, nil
}

// evictable picks the stored key to make room for a new node: of those
// the last ValidKeys found invalid, a departed (or expired) node's first,
// then the one invalid longest. e.mu is held.
func (e *Enroller) evictable() (EnrolledKey, bool) {
	var best EnrolledKey
	var bestGone, found bool
	var bestSince time.Time
	for id, since := range e.invalidSince {
		k, ok := e.store.keys[id]
		if !ok {
			continue
		}
		g := e.gone[id]
		if !found || g && !bestGone || g == bestGone && since.Before(bestSince) {
			best, bestGone, bestSince, found = k, g, since, true
		}
	}
	return best, found
}

// full reports whether the store holds MaxKeys keys.
func (e *Enroller) full() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.load() != nil {
		return false
	}
	max := e.MaxKeys
	if max <= 0 {
		max = DefaultEnrollMaxKeys
	}
	return len(e.store.keys) >= max
}

// prune deletes the keys of nodes gone (or expired) for PruneAfter and
// saves the store; it returns how many went.
func (e *Enroller) prune(now time.Time) int {
	after := e.PruneAfter
	if after <= 0 {
		after = DefaultEnrollPruneAfter
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.load() != nil {
		return 0
	}
	var gone []EnrolledKey
	for id, since := range e.invalidSince {
		if k, ok := e.store.keys[id]; ok && e.gone[id] && now.Sub(since) >= after {
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		return 0
	}
	for _, k := range gone {
		delete(e.store.keys, k.NodeID)
	}
	if err := saveEnrolledKeys(e.StorePath, e.snapshot()); err != nil {
		for _, k := range gone {
			e.store.keys[k.NodeID] = k
		}
		e.logger().Error("cannot prune departed nodes' keys", "err", err)
		return 0
	}
	for _, k := range gone {
		e.logger().Info("pruned the key of a departed node", "node", k.NodeName, "node_id", k.NodeID,
			"invalid_since", e.invalidSince[k.NodeID])
		delete(e.invalidSince, k.NodeID)
		delete(e.gone, k.NodeID)
	}
	e.gen++
	return len(gone)
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
