package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"gltoken.dev/gltoken/internal/exchange"
	"gltoken.dev/gltoken/internal/ledger"
)

// ResolveProject returns the numeric id of the project at path (a full path
// such as "group/sub/proj"; a decimal id is returned as is). Answers are
// cached for CacheTTL: a project's id does not change, and a renamed path
// stays wrong at most that long.
func (c *Client) ResolveProject(ctx context.Context, path string) (int64, error) {
	return c.resolve(ctx, "project", path, func(ctx context.Context) (int64, error) {
		p, resp, err := c.gl.Projects.GetProject(path, nil, reqOpts(ctx, http.MethodGet, "/projects/:id")...)
		if err != nil {
			return 0, c.mapError("resolve project "+path, "access to project "+path, resp, err, false)
		}
		return p.ID, nil
	})
}

// ResolveGroup returns the numeric id of the group at path, cached like ResolveProject.
func (c *Client) ResolveGroup(ctx context.Context, path string) (int64, error) {
	return c.resolve(ctx, "group", path, func(ctx context.Context) (int64, error) {
		g, resp, err := c.gl.Groups.GetGroup(path, nil, reqOpts(ctx, http.MethodGet, "/groups/:id")...)
		if err != nil {
			return 0, c.mapError("resolve group "+path, "access to group "+path, resp, err, false)
		}
		return g.ID, nil
	})
}

func (c *Client) resolve(ctx context.Context, kind, path string, fetch func(context.Context) (int64, error)) (int64, error) {
	path = strings.Trim(path, "/")
	if path == "" {
		return 0, fmt.Errorf("resolve %s: empty path", kind)
	}
	if id, err := strconv.ParseInt(path, 10, 64); err == nil && id > 0 {
		return id, nil
	}
	key := kind + ":" + path
	if id, ok := c.cache.get(key, c.now()); ok {
		return id, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("resolve %s %s: %w: %w", kind, path, exchange.ErrUnavailable, err)
	}
	// Concurrent lookups of one path share one request. The shared call runs
	// under the first caller's context; a caller whose context ends stops
	// waiting, not the others.
	ch := c.sf.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
		defer cancel()
		id, err := fetch(fctx)
		if err != nil {
			return int64(0), err
		}
		c.cache.put(key, id, c.now().Add(c.cacheTTL))
		return id, nil
	})
	select {
	case <-ctx.Done():
		return 0, fmt.Errorf("resolve %s %s: %w: %w", kind, path, exchange.ErrUnavailable, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return 0, r.Err
		}
		return r.Val.(int64), nil
	}
}

// resolveTimeout bounds a shared lookup, which outlives its first caller's context.
const resolveTimeout = 30 * time.Second

// idCache is a small path→id cache with expiry and a size bound: when full,
// expired entries go first, then the entry closest to expiry.
type idCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]cacheEntry
}

type cacheEntry struct {
	id      int64
	expires time.Time
}

func newIDCache(max int) *idCache {
	return &idCache{max: max, entries: make(map[string]cacheEntry)}
}

func (c *idCache) get(key string, now time.Time) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return 0, false
	}
	if !now.Before(e.expires) {
		delete(c.entries, key)
		return 0, false
	}
	return e.id, true
}

func (c *idCache) put(key string, id int64, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		c.evictLocked()
	}
	c.entries[key] = cacheEntry{id: id, expires: expires}
}

// evictLocked drops one entry: the one that expires first (expired entries
// expire first). O(n), fine for a few thousand entries and rare evictions.
func (c *idCache) evictLocked() {
	var victim string
	var first time.Time
	for k, e := range c.entries {
		if victim == "" || e.expires.Before(first) {
			victim, first = k, e.expires
		}
	}
	delete(c.entries, victim)
}

func (c *idCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// ResolveOwner implements exchange.Minter: the id of the project (project
// kinds) or group (group kinds) whose canonical full path is exactly path.
// GitLab's API also answers for an old path of a moved or renamed project
// (a redirect route) and ignores case; those answers are refused with
// exchange.ErrNotFound, because the policy allowed path and nothing else.
// It always asks GitLab: a cached id could belong to a project moved since.
func (c *Client) ResolveOwner(ctx context.Context, kind ledger.Kind, path string) (string, error) {
	path = strings.Trim(path, "/")
	if path == "" {
		return "", fmt.Errorf("resolve owner: %w: empty path", exchange.ErrRejected)
	}
	if !knownKind(kind) {
		return "", fmt.Errorf("resolve owner: %w: unknown credential kind %q", exchange.ErrRejected, kind)
	}
	var (
		id        int64
		canonical string
	)
	switch kind {
	case ledger.ProjectDeployToken, ledger.ProjectAccessToken:
		p, resp, err := c.gl.Projects.GetProject(path, nil, reqOpts(ctx, http.MethodGet, "/projects/:id")...)
		if err != nil {
			return "", c.mapError("resolve project "+path, "access to project "+path, resp, err, false)
		}
		id, canonical = p.ID, p.PathWithNamespace
	default:
		g, resp, err := c.gl.Groups.GetGroup(path, nil, reqOpts(ctx, http.MethodGet, "/groups/:id")...)
		if err != nil {
			return "", c.mapError("resolve group "+path, "access to group "+path, resp, err, false)
		}
		id, canonical = g.ID, g.FullPath
	}
	if canonical != path {
		return "", fmt.Errorf("resolve %s: %w: GitLab knows it as %q (moved, renamed or differently cased); ask for that path", path, exchange.ErrNotFound, canonical)
	}
	return strconv.FormatInt(id, 10), nil
}
