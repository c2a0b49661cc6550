package idtoken

import (
	"container/list"
	"crypto"
	"crypto/sha256"
	"maps"
	"slices"
	"sync"
	"time"
)

// DefaultCacheSize bounds the verification cache (Config.CacheSize).
const DefaultCacheSize = 10000

// verifiedCache remembers ID tokens that passed Verify, keyed by the SHA-256
// of the raw token, until their exp: a job presents the same token for every
// repository it fetches, and an RSA verify is most of an exchange's CPU. An
// entry is used only while the key that verified it is still in the key set
// (the same kid and the same key), and is dropped when a fetched key set no
// longer has it. Bounded: the least recently used entry goes first.
type verifiedCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recently used; values are *verifiedEntry
	byKey map[[sha256.Size]byte]*list.Element
}

type verifiedEntry struct {
	key [sha256.Size]byte
	tok *Token
	pub any // the key that verified the signature
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{max: max, order: list.New(), byKey: map[[sha256.Size]byte]*list.Element{}}
}

// get returns a copy of the cached token for key if it has not expired at now
// and the key that verified it is still ks's key for its kid.
func (c *verifiedCache) get(key [sha256.Size]byte, now time.Time, ks *keySet) (*Token, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*verifiedEntry)
	if !now.Before(e.tok.Expiry) || !stillTrusted(ks, e) {
		c.removeLocked(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return e.tok.clone(), true
}

func (c *verifiedCache) put(key [sha256.Size]byte, tok *Token, pub any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.order.MoveToFront(el)
		return
	}
	for c.order.Len() >= c.max {
		c.removeLocked(c.order.Back())
	}
	c.byKey[key] = c.order.PushFront(&verifiedEntry{key: key, tok: tok.clone(), pub: pub})
}

// retain drops every entry whose key is no longer in ks.
func (c *verifiedCache) retain(ks *keySet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if !stillTrusted(ks, el.Value.(*verifiedEntry)) {
			c.removeLocked(el)
		}
		el = next
	}
}

func (c *verifiedCache) removeLocked(el *list.Element) {
	c.order.Remove(el)
	delete(c.byKey, el.Value.(*verifiedEntry).key)
}

func (c *verifiedCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

func stillTrusted(ks *keySet, e *verifiedEntry) bool {
	vk, ok := lookup(ks, e.tok.KeyID)
	if !ok {
		return false
	}
	if vk.pub == e.pub {
		return true
	}
	eq, ok := vk.pub.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(e.pub)
}

// clone copies t so that no caller can change what the cache holds.
func (t *Token) clone() *Token {
	c := *t
	c.Audience = slices.Clone(t.Audience)
	c.Claims = maps.Clone(t.Claims)
	if t.ClaimLists != nil {
		c.ClaimLists = make(map[string][]string, len(t.ClaimLists))
		for k, v := range t.ClaimLists {
			c.ClaimLists[k] = slices.Clone(v)
		}
	}
	return &c
}
