package exchange

import (
	"container/heap"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/policy"
)

// Cache holds the credentials this process handed out, so that the same
// job asking again gets the same credential rather than a new one, and so
// that other jobs of the same project passing the same rule can share it
// (reuse: project). The service fills it; the service (on RFC 7009
// revocation) and the reaper (on every revocation) empty it. Build it with
// NewCache; it is safe for concurrent use.
type Cache struct {
	mu sync.Mutex
	// byKey: key is a cacheKey, or sharedEntryKey for a credential minted
	// under a reuse key. Every job holding a shared credential points at
	// its one entry (thousands of jobs can share it), and entries are never
	// changed once cached.
	byKey  map[string]*cached
	bySHA  map[string]map[string]bool // secret fingerprint -> the keys caching it
	shared map[string]map[string]bool // reuse key -> the keys of the credentials minted under it
	// expiries holds one item per put (key, the expiry put under it), the
	// soonest first, so that put drops what has expired without looking at
	// every entry. An item whose key was forgotten or put again since is
	// skipped when it comes up.
	expiries expiryHeap
}

type expiry struct {
	at  time.Time
	key string
}

// expiryHeap is a container/heap of expiries, the soonest on top.
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type cached struct {
	ledgerID string
	cred     Credential
	scopes   []string
	role     int    // access tokens' access level (Issued.AccessLevel)
	reuse    string // the reuse key it was minted under, if any
	rule     ruleID // the rule that allowed it, for DropChangedRules
}

// ruleID names a policy rule and its content fingerprint.
type ruleID struct{ name, fp string }

// dropRules drops every entry whose rule keep refuses.
func (c *Cache) dropRules(keep func(ruleID) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, e := range c.byKey {
		if !keep(e.rule) {
			c.forgetLocked(k)
			n++
		}
	}
	return n
}

// issued is the answer a cached credential gives.
func (e cached) issued() *Issued {
	return &Issued{AccessToken: e.cred.Secret, Username: e.cred.Username, ExpiresAt: e.cred.ExpiresAt,
		Scopes: e.scopes, Kind: e.cred.Kind, AccessLevel: e.role, LedgerID: e.ledgerID, Cached: true}
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{byKey: map[string]*cached{}, bySHA: map[string]map[string]bool{}, shared: map[string]map[string]bool{}}
}

// get returns the entry for key if it lives past freshUntil; an entry that
// does not is dropped.
func (c *Cache) get(key string, freshUntil time.Time) (cached, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return cached{}, false
	}
	if !e.cred.ExpiresAt.After(freshUntil) {
		c.forgetLocked(key)
		return cached{}, false
	}
	return *e, true
}

// getShared returns, among the credentials minted under the reuse key, the
// one that lives past freshUntil but not past notAfter (the asking job's
// ID-token exp) and lives longest; none when no credential fits.
func (c *Cache) getShared(reuse string, freshUntil, notAfter time.Time) (cached, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best cached
	found := false
	for key := range c.shared[reuse] {
		e, ok := c.byKey[key]
		switch {
		case !ok:
			delete(c.shared[reuse], key)
		case !e.cred.ExpiresAt.After(freshUntil):
			c.forgetLocked(key)
		case e.cred.ExpiresAt.After(notAfter):
		case !found || e.cred.ExpiresAt.After(best.cred.ExpiresAt):
			best, found = *e, true
		}
	}
	return best, found
}

// put caches e under key and drops every entry expired at now. An entry
// with a reuse key is also offered to other jobs under that key.
func (c *Cache) put(key string, e cached, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropExpiredLocked(now)
	// An entry put again: its old secret no longer names the key.
	c.forgetLocked(key)
	shared := sharedEntryKey(e.ledgerID)
	if e.reuse != "" {
		c.forgetLocked(shared)
	}
	p := &e
	c.byKey[key] = p
	heap.Push(&c.expiries, expiry{e.cred.ExpiresAt, key})
	sha := fingerprint.Of(e.cred.Secret)
	if c.bySHA[sha] == nil {
		c.bySHA[sha] = map[string]bool{}
	}
	c.bySHA[sha][key] = true
	if e.reuse != "" {
		c.byKey[shared] = p
		heap.Push(&c.expiries, expiry{e.cred.ExpiresAt, shared})
		c.bySHA[sha][shared] = true
		if c.shared[e.reuse] == nil {
			c.shared[e.reuse] = map[string]bool{}
		}
		c.shared[e.reuse][shared] = true
	}
}

// hold caches under key (a job's own) the shared credential of that ledger
// record, as getShared offered it: the job's later requests are answered
// from it. Nothing is cached when it has been dropped since.
// Like put, it drops every entry expired at now.
func (c *Cache) hold(key, ledgerID string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropExpiredLocked(now)
	e, ok := c.byKey[sharedEntryKey(ledgerID)]
	if !ok {
		return
	}
	c.forgetLocked(key)
	c.byKey[key] = e
	heap.Push(&c.expiries, expiry{e.cred.ExpiresAt, key})
	sha := fingerprint.Of(e.cred.Secret)
	if c.bySHA[sha] == nil {
		c.bySHA[sha] = map[string]bool{}
	}
	c.bySHA[sha][key] = true
}

// dropExpiredLocked drops every entry expired at now.
func (c *Cache) dropExpiredLocked(now time.Time) {
	for len(c.expiries) > 0 && !c.expiries[0].at.After(now) {
		x := heap.Pop(&c.expiries).(expiry)
		if old, ok := c.byKey[x.key]; ok && !old.cred.ExpiresAt.After(now) {
			c.forgetLocked(x.key)
		}
	}
	if len(c.expiries) > 64 && len(c.expiries) > 4*len(c.byKey) {
		c.compactLocked()
	}
}

// compactLocked rebuilds expiries from the entries, when most of its items
// are of entries forgotten before they expired (revocations, reloads).
func (c *Cache) compactLocked() {
	c.expiries = c.expiries[:0]
	for k, e := range c.byKey {
		c.expiries = append(c.expiries, expiry{e.cred.ExpiresAt, k})
	}
	heap.Init(&c.expiries)
}

// forgetSecret drops the credential whose secret has that fingerprint.
func (c *Cache) forgetSecret(sha string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key := range c.bySHA[sha] {
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
	e, ok := c.byKey[key]
	if !ok {
		return
	}
	delete(c.byKey, key)
	sha := fingerprint.Of(e.cred.Secret)
	delete(c.bySHA[sha], key)
	if len(c.bySHA[sha]) == 0 {
		delete(c.bySHA, sha)
	}
	if e.reuse != "" && c.shared[e.reuse][key] { // a job's own key of a shared entry is not in c.shared
		delete(c.shared[e.reuse], key)
		if len(c.shared[e.reuse]) == 0 {
			delete(c.shared, e.reuse)
		}
	}
}

// sharedEntryKey is the cache key under which a credential minted under a
// reuse key waits for other jobs.
func sharedEntryKey(ledgerID string) string { return "reuse\x00" + ledgerID }

// cacheKey identifies "the same request": the same job's ID token asking for
// the same kind of credential on the same owner with the same scopes under
// the same rule (a reload that changes the rule changes the key, so a
// credential minted under the old rule is not handed out again).
func cacheKey(tok *idtoken.Token, p plan, ruleFP string) string {
	job := tok.ID
	if job == "" {
		job = tok.Subject + "|" + tok.IssuedAt.String()
	}
	h := sha256.New()
	fmt.Fprintf(h, "job\x00%s\x00%s\x00%s\x00%s\x00%s\x00%d\x00%s", tok.Issuer, job, p.kind, p.owner, strings.Join(p.scopes, " "), p.role, ruleFP)
	return hex.EncodeToString(h.Sum(nil))
}

// reuseKey identifies the credentials one job may share with another
// (reuse: project): the same source project passing the same rule (by its
// content) for the same owner, kind, scopes and role. It is empty when the
// rule opts out (reuse: job) or the token names no job or project, which
// GitLab's ID tokens always do.
func reuseKey(tok *idtoken.Token, p plan, dec policy.Decision) string {
	project, job := tok.Claims["project_id"], tok.Claims["job_id"]
	if dec.Reuse == policy.ReuseJob || project == "" || job == "" || dec.RuleFingerprint == "" {
		return ""
	}
	h := sha256.New()
	// The project the job runs in as well: a fork's merge-request job (if a
	// rule admits it) shares only with jobs of the same fork in the same project.
	fmt.Fprintf(h, "reuse\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%d", tok.Issuer, project, JobProject(tok.Claims), dec.RuleFingerprint, p.kind, p.owner, strings.Join(p.scopes, " "), p.role)
	return hex.EncodeToString(h.Sum(nil))
}
