package exchange

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
)

// Cache holds the credentials this process handed out, so that the same
// job asking again gets the same credential rather than a new one. The
// service fills it; the service (on RFC 7009 revocation) and the reaper (on
// every revocation) empty it. Build it with NewCache; it is safe for
// concurrent use.
type Cache struct {
	mu    sync.Mutex
	byKey map[string]cached // key: cacheKey
	bySHA map[string]string // secret fingerprint -> cache key
}

type cached struct {
	ledgerID string
	cred     Credential
	scopes   []string
	role     int // access tokens' access level (Issued.AccessLevel)
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{byKey: map[string]cached{}, bySHA: map[string]string{}}
}

// get returns the entry for key if it lives past freshUntil; an entry that
// does not is dropped.
func (c *Cache) get(key string, freshUntil time.Time) (cached, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if ok && !e.cred.ExpiresAt.After(freshUntil) {
		c.forgetLocked(key)
		return cached{}, false
	}
	return e, ok
}

// put caches e under key and drops every entry expired at now.
func (c *Cache) put(key string, e cached, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, old := range c.byKey { // the cache is small: one entry per live credential
		if !old.cred.ExpiresAt.After(now) {
			c.forgetLocked(k)
		}
	}
	c.byKey[key] = e
	c.bySHA[fingerprint.Of(e.cred.Secret)] = key
}

// forgetSecret drops the credential whose secret has that fingerprint.
func (c *Cache) forgetSecret(sha string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if key, ok := c.bySHA[sha]; ok {
		c.forgetLocked(key)
	}
}

// forgetLedgerID drops the credential of that ledger record.
func (c *Cache) forgetLedgerID(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.byKey {
		if e.ledgerID == id {
			c.forgetLocked(k)
		}
	}
}

func (c *Cache) forgetLocked(key string) {
	if e, ok := c.byKey[key]; ok {
		delete(c.bySHA, fingerprint.Of(e.cred.Secret))
		delete(c.byKey, key)
	}
}

// cacheKey identifies "the same request": the same job's ID token asking for
// the same kind of credential on the same owner with the same scopes.
func cacheKey(tok *idtoken.Token, kind ledger.Kind, owner string, scopes []string) string {
	job := tok.ID
	if job == "" {
		job = tok.Subject + "|" + tok.IssuedAt.String()
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s", tok.Issuer, job, kind, owner, strings.Join(scopes, " "))
	return hex.EncodeToString(h.Sum(nil))
}
