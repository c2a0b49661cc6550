package gitlab

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// NotFoundTTL is how long ResolveOwner remembers that GitLab has no project
// or group at a path (or only under another one): a job asking again and
// again for nonexistent projects under an allowed glob costs one GitLab call
// per path per NotFoundTTL, not one per request. Only "not found" is
// remembered; an id found is never cached (it could belong to a project
// moved since).
const NotFoundTTL = 30 * time.Second

// maxNotFound bounds the paths remembered; when full, the entry that
// expires first goes.
const maxNotFound = 4096

type notFoundCache struct {
	mu      sync.Mutex
	entries map[string]notFoundEntry
}

type notFoundEntry struct {
	err   error
	until time.Time
}

func (c *notFoundCache) get(key string, now time.Time) (error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	if !now.Before(e.until) {
		delete(c.entries, key)
		return nil, false
	}
	return e.err, true
}

func (c *notFoundCache) put(key string, err error, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]notFoundEntry{}
	}
	if _, ok := c.entries[key]; !ok && len(c.entries) >= maxNotFound {
		var victim string
		var first time.Time
		for k, e := range c.entries {
			if victim == "" || e.until.Before(first) {
				victim, first = k, e.until
			}
		}
		delete(c.entries, victim)
	}
	c.entries[key] = notFoundEntry{err: err, until: until}
}

// ResolveOwner implements exchange.Minter (see resolveOwner), answering a
// recent "not found" for the same path from memory.
func (c *Client) ResolveOwner(ctx context.Context, kind ledger.Kind, path string) (int64, error) {
	key := "project:"
	if kind == ledger.GroupDeployToken || kind == ledger.GroupAccessToken {
		key = "group:"
	}
	key += strings.Trim(path, "/")
	if err, ok := c.notFound.get(key, c.now()); ok {
		return 0, err
	}
	id, err := c.resolveOwner(ctx, kind, path)
	if errors.Is(err, exchange.ErrNotFound) {
		c.notFound.put(key, err, c.now().Add(NotFoundTTL))
	}
	return id, err
}
