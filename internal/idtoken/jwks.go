package idtoken

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// verifyKey is one usable JWKS key, prepared at fetch time so that Verify does no conversion.
type verifyKey struct {
	alg string // the JWK's own "alg"; "" when the JWK does not set one
	pub any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keySet is an immutable snapshot of the last good JWKS, looked up by kid.
type keySet struct {
	byKid map[string]verifyKey
}

// install is the jwk.Cache PostFetcher: it runs after every successful download and parse.
// Returning an error keeps the previous set in jwk.Cache, and we only swap our snapshot on
// success: a failed, empty or unusable response never replaces a good key set.
func (v *Verifier) install(_ string, set jwk.Set) (jwk.Set, error) {
	if set.Len() > MaxJWKSKeys {
		return nil, fmt.Errorf("JWKS has %d keys, more than %d", set.Len(), MaxJWKSKeys)
	}
	ks := &keySet{byKid: make(map[string]verifyKey, set.Len())}
	for i := range set.Len() {
		k, _ := set.Key(i)
		kid := k.KeyID()
		vk, err := usableKey(k)
		if err != nil {
			v.log.Warn("ignoring JWKS key", "kid", kid, "reason", err.Error())
			continue
		}
		if _, dup := ks.byKid[kid]; dup {
			return nil, fmt.Errorf("JWKS has two keys with kid %q", kid)
		}
		ks.byKid[kid] = vk
	}
	if len(ks.byKid) == 0 {
		return nil, errors.New("JWKS has no usable signing key")
	}
	old := v.keys.Swap(ks)
	if v.verified != nil {
		v.verified.retain(ks)
	}
	v.refreshOK.Add(1)
	if old == nil || !sameKids(old, ks) {
		v.log.Info("JWKS loaded", "url", v.jwksURL, "kids", kids(ks))
	}
	return set, nil
}

// usableKey checks a JWK and extracts its raw public key.
func usableKey(k jwk.Key) (verifyKey, error) {
	var vk verifyKey
	if k.KeyID() == "" {
		return vk, errors.New("no kid")
	}
	if use := k.KeyUsage(); use != "" && use != "sig" {
		return vk, fmt.Errorf("use %q", use)
	}
	vk.alg = k.Algorithm().String()
	pub, err := jwk.PublicRawKeyOf(k)
	if err != nil {
		return vk, err
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < minRSABits {
			return vk, fmt.Errorf("RSA key of %d bits, want at least %d", p.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
	case ed25519.PublicKey:
	default:
		return vk, fmt.Errorf("key type %s cannot verify an asymmetric signature", k.KeyType())
	}
	vk.pub = pub
	return vk, nil
}

func kids(ks *keySet) []string {
	out := make([]string, 0, len(ks.byKid))
	for kid := range ks.byKid {
		out = append(out, kid)
	}
	slices.Sort(out)
	return out
}

func sameKids(a, b *keySet) bool { return slices.Equal(kids(a), kids(b)) }

// startCache makes jwk.Cache's first fetch, which also schedules its periodic refresh. Every
// later fetch outside that schedule goes through fetch instead: each jwk.Cache.Refresh call
// would start one more self-perpetuating refresh chain in httprc v1, so on-demand refetches
// through it would multiply the background load on GitLab.
func (v *Verifier) startCache(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout+time.Second)
	defer cancel()
	if _, err := v.cache.Refresh(ctx, v.jwksURL); err != nil {
		v.fetchFailed(err)
		return err
	}
	return nil
}

// fetch downloads and installs the JWKS now, outside jwk.Cache's schedule.
func (v *Verifier) fetch(ctx context.Context) error {
	err := func() error {
		res, err := v.client.get(ctx, v.jwksURL)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil {
			return err
		}
		set, err := jwk.Parse(body)
		if err != nil {
			return fmt.Errorf("parse JWKS: %w", err)
		}
		_, err = v.install(v.jwksURL, set)
		return err
	}()
	if err != nil {
		v.fetchFailed(err)
	}
	return err
}

func (v *Verifier) fetchFailed(err error) {
	v.refreshFailed.Add(1)
	v.log.Warn("JWKS fetch failed; keeping the last good key set", "url", v.jwksURL, "error", err.Error(), "ready", v.Ready())
}

// backgroundFailure receives the errors of jwk.Cache's periodic refreshes.
func (v *Verifier) backgroundFailure(err error) { v.fetchFailed(err) }

// retryUntilLoaded runs when the first fetch failed: a daemon that is not ready gets no
// traffic, so nothing else would trigger a fetch before the next periodic refresh.
func (v *Verifier) retryUntilLoaded() {
	t := time.NewTicker(v.cooldown)
	defer t.Stop()
	for !v.Ready() {
		select {
		case <-v.ctx.Done():
			return
		case <-t.C:
			_ = v.fetch(v.ctx)
		}
	}
}

// errCoolingDown: an on-demand fetch was skipped because the last one is too recent.
var errCoolingDown = errors.New("JWKS refetch cooling down")

// refetch fetches the JWKS on behalf of Verify (unknown kid, or no key set yet): at most once
// per cooldown, and concurrent callers share one fetch.
func (v *Verifier) refetch(ctx context.Context) error {
	ch := v.flight.DoChan("jwks", func() (any, error) {
		v.mu.Lock()
		now := v.now()
		if !v.lastOnDemand.IsZero() && now.Sub(v.lastOnDemand) < v.cooldown {
			v.mu.Unlock()
			return nil, errCoolingDown
		}
		v.lastOnDemand = now
		v.mu.Unlock()
		// Not the caller's ctx: the fetch is shared, and one caller giving up must not fail it.
		return nil, v.fetch(v.ctx)
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// key finds the verification key for a token's kid, refetching the JWKS (subject to the
// cooldown) when the kid is unknown, and checks that the key fits the token's alg.
func (v *Verifier) key(ctx context.Context, alg, kid string) (any, error) {
	ks := v.keys.Load()
	vk, ok := lookup(ks, kid)
	if !ok {
		fetchErr := v.refetch(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the JWKS: %w", ctx.Err())
		}
		ks = v.keys.Load()
		if ks == nil {
			return nil, fmt.Errorf("%w: JWKS %s never loaded: %v", ErrKeysUnavailable, v.jwksURL, fetchErr)
		}
		if vk, ok = lookup(ks, kid); !ok {
			return nil, fmt.Errorf("%w: kid %s not in JWKS %s", ErrUnknownKey, quote(kid), v.jwksURL)
		}
	}
	if vk.alg != "" && vk.alg != alg {
		return nil, fmt.Errorf("%w: token alg %s but key %s is for %s", ErrAlgorithm, alg, quote(kid), vk.alg)
	}
	if !fits(vk.pub, alg) {
		return nil, fmt.Errorf("%w: key %s (%T) cannot verify %s", ErrAlgorithm, quote(kid), vk.pub, alg)
	}
	return vk.pub, nil
}

func lookup(ks *keySet, kid string) (verifyKey, bool) {
	if ks == nil {
		return verifyKey{}, false
	}
	vk, ok := ks.byKid[kid]
	return vk, ok
}

// fits reports whether a public key's type (and curve) is the one alg requires.
func fits(pub any, alg string) bool {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return p.Curve == elliptic.P256()
		case "ES384":
			return p.Curve == elliptic.P384()
		case "ES512":
			return p.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// jwksClient adapts an *http.Client to jwk.Cache: it bounds each fetch in time (FetchTimeout,
// whatever the client's own settings) and size (MaxJWKSBytes), refuses non-200 answers, and
// always drains and closes the body (jwk.Cache does not close it on errors).
type jwksClient struct {
	ctx    context.Context
	client *http.Client
}

// Get implements jwk.HTTPClient for jwk.Cache's scheduled refreshes.
func (c *jwksClient) Get(u string) (*http.Response, error) { return c.get(c.ctx, u) }

// get fetches u; the response body is already read and may be ignored.
func (c *jwksClient) get(ctx context.Context, u string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	res, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
		return nil, fmt.Errorf("GET %s: status %s", u, res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", u, err)
	}
	if len(body) > MaxJWKSBytes {
		return nil, fmt.Errorf("GET %s: body exceeds %d bytes", u, MaxJWKSBytes)
	}
	return &http.Response{
		Status:     res.Status,
		StatusCode: res.StatusCode,
		Header:     res.Header,
		Body:       io.NopCloser(bytes.NewReader(body)),
		Request:    res.Request,
	}, nil
}

// defaultHTTPClient has timeouts at every stage and follows redirects only within the host.
func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 5 * time.Second
	tr.ResponseHeaderTimeout = FetchTimeout
	return &http.Client{Transport: tr, Timeout: FetchTimeout, CheckRedirect: sameOrigin}
}

// sameOrigin is the JWKS fetch's redirect rule, also imposed on an injected
// client: a redirect may not change scheme or host, so an https JWKS can
// never be served over http or by another server.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= 3 {
		return errors.New("too many redirects")
	}
	if req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
		return fmt.Errorf("redirect to another origin (%s://%s) refused", req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// errSink adapts a function to jwk.ErrSink.
type errSink func(error)

func (f errSink) Error(err error) { f(err) }
