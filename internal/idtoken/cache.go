package idtoken

import (
	"container/list"
	"crypto"
	"crypto/sha256"
	"maps"
	"slices"
	"strings"
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
	// names interns the sorted claim names of the cached tokens: every ID
	// token of one GitLab carries the same set, so the entries share one
	// slice. Bounded by maxNameSets; past it an entry keeps its own.
	names map[string][]string
}

// maxNameSets bounds the interned claim-name sets.
const maxNameSets = 64

type verifiedEntry struct {
	key [sha256.Size]byte
	tok packedToken
	pub any // the key that verified the signature
}

// packedToken is a verified token as the cache keeps it, a tenth of the
// size of a *Token with its map (the cache holds one per job, thousands):
// every string of the token is a piece of one string, values.
type packedToken struct {
	names  []string // claim names, sorted; interned
	values string   // iss, sub, jti, kid, the audience, then the claims in names' order
	ends   []uint32 // ends[i]: where piece i ends in values
	nAud   int
	lists  map[string][]string // ClaimLists (rare), copied
	iat    time.Time
	nbf    time.Time
	exp    time.Time
}

// fixed pieces of packedToken.values before the audience.
const (
	pieceIss = iota
	pieceSub
	pieceJTI
	pieceKID
	pieceAud
)

func (c *verifiedCache) pack(t *Token) packedToken {
	names := slices.Sorted(maps.Keys(t.Claims))
	joined := strings.Join(names, "\x00")
	if shared, ok := c.names[joined]; ok {
		names = shared
	} else if len(c.names) < maxNameSets {
		c.names[joined] = names
	}
	n := 0
	for _, v := range t.Claims {
		n += len(v)
	}
	n += len(t.Issuer) + len(t.Subject) + len(t.ID) + len(t.KeyID)
	for _, a := range t.Audience {
		n += len(a)
	}
	var b strings.Builder
	b.Grow(n)
	ends := make([]uint32, 0, pieceAud+len(t.Audience)+len(names))
	add := func(v string) {
		b.WriteString(v)
		ends = append(ends, uint32(b.Len()))
	}
	add(t.Issuer)
	add(t.Subject)
	add(t.ID)
	add(t.KeyID)
	for _, a := range t.Audience {
		add(a)
	}
	for _, name := range names {
		add(t.Claims[name])
	}
	p := packedToken{names: names, values: b.String(), ends: ends, nAud: len(t.Audience), iat: t.IssuedAt, nbf: t.NotBefore, exp: t.Expiry}
	if t.ClaimLists != nil {
		p.lists = cloneLists(t.ClaimLists)
	}
	return p
}

func (p *packedToken) piece(i int) string {
	start := uint32(0)
	if i > 0 {
		start = p.ends[i-1]
	}
	return p.values[start:p.ends[i]]
}

func (p *packedToken) kid() string { return p.piece(pieceKID) }

// unpack returns a new Token, which the caller may change freely.
func (p *packedToken) unpack() *Token {
	t := &Token{Issuer: p.piece(pieceIss), Subject: p.piece(pieceSub), ID: p.piece(pieceJTI), KeyID: p.piece(pieceKID),
		IssuedAt: p.iat, NotBefore: p.nbf, Expiry: p.exp, Claims: make(map[string]string, len(p.names))}
	if p.nAud > 0 {
		t.Audience = make([]string, p.nAud)
		for i := range t.Audience {
			t.Audience[i] = p.piece(pieceAud + i)
		}
	}
	for i, name := range p.names {
		t.Claims[name] = p.piece(pieceAud + p.nAud + i)
	}
	if p.lists != nil {
		t.ClaimLists = cloneLists(p.lists)
	}
	return t
}

func cloneLists(l map[string][]string) map[string][]string {
	c := make(map[string][]string, len(l))
	for k, v := range l {
		c[k] = slices.Clone(v)
	}
	return c
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{max: max, order: list.New(), byKey: map[[sha256.Size]byte]*list.Element{}, names: map[string][]string{}}
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
	if !now.Before(e.tok.exp) || !stillTrusted(ks, e) {
		c.removeLocked(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return e.tok.unpack(), true
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
	c.byKey[key] = c.order.PushFront(&verifiedEntry{key: key, tok: c.pack(tok), pub: pub})
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
	vk, ok := lookup(ks, e.tok.kid())
	if !ok {
		return false
	}
	if vk.pub == e.pub {
		return true
	}
	eq, ok := vk.pub.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(e.pub)
}
