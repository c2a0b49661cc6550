// Package svctoken keeps the service account's GitLab token: it reads it from
// its file (refusing one others could read), serves the token in force to the
// GitLab client (Keeper.Token), and rotates it before it expires with GitLab's
// self-rotation (POST /personal_access_tokens/self/rotate with an explicit
// expires_at), writing the successor to the file atomically before first use.
//
// GitLab revokes the old token the moment it rotates, and a revoked token
// presented to a rotate path again revokes the whole family, so a rotate is
// never retried blindly: when its answer is lost the Keeper raises an alert
// (OnEvent "lost", Alert) and only after ProbeAfter asks GitLab (GET
// /personal_access_tokens/self, never a rotate path) whether the old token
// still works. If it does, the rotation did not happen and will be tried again;
// if it does not, the successor is lost and an operator installs a new token
// (the README's recovery steps) and sends SIGHUP.
//
// Replicas sharing a store (ledger.RotationStore) claim each rotation there,
// so exactly one asks GitLab; the others find the successor sealed in the
// store, write it to their own file, and switch to it.
package svctoken

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/ledger"
)

// Info is what GitLab says about a personal access token.
type Info struct {
	ID        int64
	Name      string
	UserID    int64
	Scopes    []string
	ExpiresAt time.Time // the expiry date (the token is invalid from its start); zero: never
	Active    bool
}

// GitLab is what the Keeper needs of GitLab's API, each call made with the
// token given (not the one in force).
type GitLab interface {
	// SelfToken is GET /personal_access_tokens/self. An error wrapping
	// ErrRevoked means GitLab rejects the token (revoked, expired, unknown).
	SelfToken(ctx context.Context, secret string) (Info, error)
	// RotateSelf is POST /personal_access_tokens/self/rotate with expires_at.
	// It is never retried. An error wrapping ErrLost means the outcome is
	// unknown; ErrRevoked, that GitLab rejected the token; any other error is
	// a refusal that changed nothing.
	RotateSelf(ctx context.Context, secret string, expiresAt time.Time) (string, Info, error)
}

var (
	// ErrRevoked: GitLab answered 401 to the token.
	ErrRevoked = errors.New("GitLab rejected the service token (401: revoked, expired or unknown)")
	// ErrLost: the rotate's answer was lost; GitLab may have rotated.
	ErrLost = errors.New("the answer to the rotation was lost: GitLab may have revoked the old token")
)

// Events passed to Config.OnEvent (the rotations metric's outcomes).
const (
	EventRotated      = "rotated"        // rotated and persisted
	EventAdopted      = "adopted"        // took up a successor another replica rotated to
	EventRefused      = "refused"        // GitLab refused the rotation; nothing changed
	EventLost         = "lost"           // the rotation's answer was lost (alert)
	EventRevoked      = "revoked"        // GitLab rejects the token in force (alert)
	EventNotWritable  = "not_writable"   // the token file's directory cannot take the new file; not rotated
	EventUnpersisted  = "persist_failed" // rotated, but the new token is not on disk yet (alert)
	EventNotRotated   = "not_rotated"    // after a lost answer: the old token still works, nothing happened
	EventPublishError = "publish_failed" // the successor could not be published to the shared store yet
)

// Config configures a Keeper.
type Config struct {
	// File holds the token, mode 0600 or stricter, in a directory the daemon
	// may write (the successor is written next to it, then renamed over it).
	File   string
	GitLab GitLab
	// Store, when set, coordinates replicas (one rotator; successors shared).
	Store ledger.RotationStore
	// Holder names this replica in the store (default host/pid/random).
	Holder string
	// Rotate enables rotation. Without it the token is still read, checked
	// and reloaded, and successors published by other replicas are taken up.
	Rotate bool
	// Before: rotate when the token expires within this (default 7 days).
	Before time.Duration
	// Lifetime: the successor's expires_at is this far ahead (default 30 days;
	// GitLab caps it at its maximum lifetime, 365 days by default).
	Lifetime time.Duration
	// Interval between looks at the expiry and the store (default 10 s).
	Interval time.Duration
	// ProbeAfter: how long after a lost answer (or a claim that never
	// completed) the old token is checked at GitLab (default 5 min, well past
	// any in-flight request).
	ProbeAfter time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
	// OnEvent, when set, receives each Event* (metrics).
	OnEvent func(event string)
}

// state is the Keeper's health.
type state int

const (
	stateOK          state = iota
	stateLost              // a rotation's answer was lost; probe at lostAt+ProbeAfter
	stateLockedOut         // GitLab rejects the token in force
	stateUnpersisted       // the token in force is not on disk
)

// Keeper holds the service token in force.
type Keeper struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	secret atomic.Pointer[string]

	mu sync.Mutex // serialises Start, Tick and Reload; guards the rest
	// info about the token in force, when known
	info       Info
	infoKnown  bool
	infoAt     time.Time // last attempt to learn it
	state      state
	reason     string    // why the state is not OK (no secret)
	lostAt     time.Time // when the answer was lost
	lostOld    string    // the token whose rotation's answer was lost
	retryAt    time.Time // no rotation attempt before this (after a refusal)
	recheckDue bool      // a Recheck came too soon after the last check: Tick checks
	// publish, when set, is a completed rotation not yet in the store.
	publish *publication

	expiry  atomic.Int64 // unix seconds of info.ExpiresAt (0: unknown or never)
	alert   atomic.Bool
	problem atomic.Pointer[string] // why the token cannot mint (Problem)
	recheck chan struct{}          // Recheck's wake-up of Run
}

// RecheckEvery bounds how often Recheck asks GitLab about the token.
const RecheckEvery = 10 * time.Second

type publication struct{ old, next string }

// New reads the token file (failing on a bad mode or content) and returns a
// Keeper. It does not contact GitLab (see Start).
func New(cfg Config) (*Keeper, error) {
	if cfg.File == "" {
		return nil, errors.New("svctoken: no token file")
	}
	if cfg.GitLab == nil {
		return nil, errors.New("svctoken: no GitLab client")
	}
	if cfg.Before <= 0 {
		cfg.Before = 7 * 24 * time.Hour
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 30 * 24 * time.Hour
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.ProbeAfter <= 0 {
		cfg.ProbeAfter = 5 * time.Minute
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Holder = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	k := &Keeper{cfg: cfg, log: cfg.Logger, now: cfg.Now, recheck: make(chan struct{}, 1)}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if k.now == nil {
		k.now = time.Now
	}
	tok, err := ReadFile(cfg.File)
	if err != nil {
		return nil, err
	}
	k.secret.Store(&tok)
	return k, nil
}

// Token is the service token in force. It MUST NOT be logged.
func (k *Keeper) Token() string { return *k.secret.Load() }

// ExpiresAt is the expiry date of the token in force (zero: unknown or never).
func (k *Keeper) ExpiresAt() time.Time {
	if s := k.expiry.Load(); s != 0 {
		return time.Unix(s, 0).UTC()
	}
	return time.Time{}
}

// Alerting reports whether an operator is needed or soon will be: a lost
// rotation answer, a token GitLab rejects, or a token not yet on disk.
func (k *Keeper) Alerting() bool { return k.alert.Load() }

// File is the token file.
func (k *Keeper) File() string { return k.cfg.File }

// Problem says why the token in force cannot mint, as far as GitLab has told:
// it rejects the token (invalid, expired, revoked) or the token lacks the api
// scope. Empty when GitLab accepted it or has not been asked yet. /readyz
// reports it.
func (k *Keeper) Problem() string {
	if p := k.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// Check asks GitLab about secret (GET /personal_access_tokens/self) and says
// what is wrong with it for minting: rejected (an error wrapping ErrRevoked),
// or Problem-like text for a missing api scope or an inactive token; "" when
// it is fine. exchanged check --online uses it.
func Check(ctx context.Context, gl GitLab, secret string) (Info, string, error) {
	info, err := gl.SelfToken(ctx, secret)
	if err != nil {
		return Info{}, "", err
	}
	return info, infoProblem(info), nil
}

// infoProblem is what keeps an accepted token from minting.
func infoProblem(info Info) string {
	if !info.Active {
		return "GitLab says the service token is not active (revoked or expired)"
	}
	for _, s := range info.Scopes {
		if s == "api" {
			return ""
		}
	}
	return fmt.Sprintf("the service token lacks the api scope (it has %v): GitLab refuses to create tokens with it", info.Scopes)
}

// DaysLeft is the whole days from now until info's expiry date (-1: never expires).
func DaysLeft(info Info, now time.Time) int {
	if info.ExpiresAt.IsZero() {
		return -1
	}
	return int(info.ExpiresAt.Sub(now).Hours() / 24)
}

func (k *Keeper) setProblem(p string) {
	if p == "" {
		k.problem.Store(nil)
		return
	}
	k.problem.Store(&p)
}

// Start takes up any successor published in the store, asks GitLab about the
// token, and rotates it if it is due. Failures are logged and alerted, never
// fatal: the daemon keeps serving what it can (verification, cached
// credentials).
func (k *Keeper) Start(ctx context.Context) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.adoptLocked(ctx)
	k.learnLocked(ctx)
	if k.dueLocked(k.now()) {
		k.rotateLocked(ctx)
	}
}

// Run calls Tick every Interval, and asks GitLab about the token after each
// Recheck, until ctx ends.
func (k *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(k.cfg.Interval)
	defer t.Stop()
	later := time.NewTimer(0)
	<-later.C
	defer later.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			k.Tick(ctx)
		case <-k.recheck:
			if wait := k.CheckNow(ctx); wait > 0 {
				later.Reset(wait)
			}
		case <-later.C:
			k.CheckNow(ctx)
		}
	}
}

// Recheck asks Run to check the token at GitLab again soon: GitLab answered
// a call made with it 401, so it may have been revoked (by an administrator,
// or expired). It does not block. A token GitLab rejects is then the
// Keeper's Problem (out of rotation, for a daemon with several tokens) until
// a valid one is installed and reloaded.
func (k *Keeper) Recheck() {
	select {
	case k.recheck <- struct{}{}:
	default:
	}
}

// CheckNow asks GitLab about the token in force now (GET
// /personal_access_tokens/self), unless a rotation's answer is being settled
// (the probe after a lost answer decides that case). Within RecheckEvery of
// the last question it asks nothing and returns how long to wait; the
// check is not forgotten (Tick makes it once that time has passed).
func (k *Keeper) CheckNow(ctx context.Context) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state == stateLost {
		return 0
	}
	if since := k.now().Sub(k.infoAt); since < RecheckEvery {
		k.recheckDue = true
		return RecheckEvery - since
	}
	k.recheckDue = false
	k.learnLocked(ctx)
	return 0
}

// Tick does what is due: write an unpersisted token, publish a rotation,
// take up a successor, probe after a lost answer, learn the expiry, rotate.
func (k *Keeper) Tick(ctx context.Context) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if k.state == stateUnpersisted {
		if err := writeFile(k.cfg.File, k.Token()); err != nil {
			k.log.ErrorContext(ctx, "service token still not written to its file: a restart now would lose it", "file", k.cfg.File, "error", err.Error())
		} else {
			k.log.InfoContext(ctx, "service token written to its file", "file", k.cfg.File)
			k.setStateLocked(stateOK, "")
		}
	}
	k.publishLocked(ctx)
	k.adoptLocked(ctx)
	if k.state == stateLost && !now.Before(k.lostAt.Add(k.cfg.ProbeAfter)) {
		k.probeLostLocked(ctx)
	}
	switch {
	case !k.infoKnown && now.Sub(k.infoAt) >= time.Minute,
		k.recheckDue && k.state != stateLost && now.Sub(k.infoAt) >= RecheckEvery:
		k.recheckDue = false
		k.learnLocked(ctx)
	}
	if k.dueLocked(now) {
		k.rotateLocked(ctx)
	}
}

// Reload re-reads the token file (SIGHUP). A file with a bad mode or content
// is refused with an error naming the file and mode, and the token in force
// stays. Otherwise the file's token is taken (an operator's new token after
// a lost rotation, or the same one), any alert is cleared, and GitLab is asked
// about it again.
func (k *Keeper) Reload(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	tok, err := ReadFile(k.cfg.File)
	if err != nil {
		k.log.ErrorContext(ctx, "service token file refused on reload; the token in force stays", "error", err.Error())
		return err
	}
	if k.state == stateUnpersisted && tok != k.Token() {
		// The file still holds the token before a rotation we could not write.
		k.log.WarnContext(ctx, "service token file reload ignored: the token in force is newer and not written yet", "file", k.cfg.File)
		return nil
	}
	if tok != k.Token() {
		k.log.InfoContext(ctx, "service token reloaded from its file", "file", k.cfg.File, "token_sha256", fingerprint.Of(tok))
		k.secret.Store(&tok)
	}
	k.setStateLocked(stateOK, "")
	k.lostOld, k.retryAt = "", time.Time{}
	k.infoKnown = false
	k.learnLocked(ctx)
	return nil
}

func (k *Keeper) emit(event string) {
	if k.cfg.OnEvent != nil {
		k.cfg.OnEvent(event)
	}
}

func (k *Keeper) setStateLocked(s state, reason string) {
	k.state, k.reason = s, reason
	k.alert.Store(s != stateOK)
	if s == stateLockedOut {
		k.setProblem(reason + " (401: invalid, expired or revoked)")
	} else if k.infoKnown {
		k.setProblem(infoProblem(k.info))
	} else {
		k.setProblem("")
	}
}

func (k *Keeper) setInfoLocked(info Info) {
	k.info, k.infoKnown = info, true
	if info.ExpiresAt.IsZero() {
		k.expiry.Store(0)
	} else {
		k.expiry.Store(info.ExpiresAt.Unix())
	}
}

// learnLocked asks GitLab about the token in force.
func (k *Keeper) learnLocked(ctx context.Context) {
	k.infoAt = k.now()
	info, err := k.cfg.GitLab.SelfToken(ctx, k.Token())
	switch {
	case errors.Is(err, ErrRevoked):
		if k.state != stateLockedOut {
			k.emit(EventRevoked)
		}
		k.setStateLocked(stateLockedOut, "GitLab rejects the service token")
		k.log.ErrorContext(ctx, "GitLab rejects the service token: minting fails until a valid token is installed (see the README: the service token's recovery)",
			"file", k.cfg.File, "token_sha256", fingerprint.Of(k.Token()), "error", err.Error())
		return
	case err != nil:
		k.log.WarnContext(ctx, "could not ask GitLab about the service token; asking again in a minute", "error", err.Error())
		return
	}
	k.setInfoLocked(info)
	if k.state == stateLockedOut {
		k.setStateLocked(stateOK, "")
	}
	p := infoProblem(info)
	k.setProblem(p)
	attrs := []any{"file", k.cfg.File, "token_id", info.ID, "token_name", info.Name, "scopes", info.Scopes, "rotation", k.cfg.Rotate}
	if p != "" {
		k.log.ErrorContext(ctx, p+": minting fails until a token with the api scope is installed", attrs...)
	}
	if info.ExpiresAt.IsZero() {
		k.log.InfoContext(ctx, "service token never expires: it is not rotated", attrs...)
		return
	}
	attrs = append(attrs, "expires_at", info.ExpiresAt.Format(time.DateOnly), "days_left", DaysLeft(info, k.now()),
		"rotate_at", info.ExpiresAt.Add(-k.cfg.Before).Format(time.RFC3339))
	k.log.InfoContext(ctx, "service token checked", attrs...)
}

func (k *Keeper) dueLocked(now time.Time) bool {
	return k.cfg.Rotate && k.state == stateOK && k.infoKnown && !k.info.ExpiresAt.IsZero() &&
		!now.Before(k.info.ExpiresAt.Add(-k.cfg.Before)) && !now.Before(k.retryAt)
}

// rotateLocked rotates the token in force once.
func (k *Keeper) rotateLocked(ctx context.Context) {
	old := k.Token()
	oldSHA := fingerprint.Of(old)
	now := k.now()
	log := k.log.With("file", k.cfg.File, "token_sha256", oldSHA, "token_id", k.info.ID)
	if k.cfg.Store != nil {
		row, won, err := k.cfg.Store.ClaimRotation(ctx, oldSHA, k.cfg.Holder, now, time.Time{})
		if err != nil {
			log.WarnContext(ctx, "service token rotation: cannot claim it in the store; trying again later", "error", err.Error())
			return
		}
		if !won {
			if row.Done() {
				k.adoptLocked(ctx)
				return
			}
			if now.Sub(row.ClaimedAt) < k.cfg.ProbeAfter {
				log.DebugContext(ctx, "service token rotation claimed by another replica", "holder", row.Holder)
				return
			}
			// The claim is old and never completed: take it over only when
			// GitLab says the token still works (then nothing happened).
			if _, err := k.cfg.GitLab.SelfToken(ctx, old); err != nil {
				if errors.Is(err, ErrRevoked) {
					k.lockedOutLocked(ctx, log, fmt.Sprintf("replica %s claimed the rotation at %s and never published the successor, and GitLab rejects the old token", row.Holder, row.ClaimedAt.Format(time.RFC3339)))
				}
				return
			}
			if _, won, err = k.cfg.Store.ClaimRotation(ctx, oldSHA, k.cfg.Holder, now, now.Add(-k.cfg.ProbeAfter)); err != nil || !won {
				return
			}
			log.WarnContext(ctx, "service token rotation: took over a claim that never completed (the old token still works)", "holder", row.Holder)
		}
	}
	release := func() {
		if k.cfg.Store != nil {
			if err := k.cfg.Store.ReleaseRotation(ctx, oldSHA, k.cfg.Holder); err != nil {
				log.WarnContext(ctx, "service token rotation: cannot release the claim", "error", err.Error())
			}
		}
	}
	// Never present a token GitLab may have revoked to a rotate path: that
	// revokes the whole family. Ask first, on a path that does not.
	if _, err := k.cfg.GitLab.SelfToken(ctx, old); err != nil {
		release()
		if errors.Is(err, ErrRevoked) {
			k.lockedOutLocked(ctx, log, "GitLab rejects the service token")
			return
		}
		log.WarnContext(ctx, "service token rotation postponed: GitLab did not answer", "error", err.Error())
		k.retryAt = now.Add(time.Minute)
		return
	}
	w, err := prepareWrite(k.cfg.File)
	if err != nil {
		release()
		k.emit(EventNotWritable)
		k.retryAt = now.Add(time.Hour)
		log.ErrorContext(ctx, "service token NOT rotated: its directory cannot take the new token file (rotating would lose the token); make the directory writable for the daemon or disable rotation",
			"error", err.Error(), "expires_at", k.info.ExpiresAt.Format(time.DateOnly))
		return
	}
	expiresAt := now.Add(k.cfg.Lifetime)
	next, info, err := k.cfg.GitLab.RotateSelf(ctx, old, expiresAt)
	if err != nil {
		w.abort()
		switch {
		case errors.Is(err, ErrLost):
			// Keep the claim: no other replica may rotate this token.
			k.emit(EventLost)
			k.state, k.lostAt, k.lostOld = stateLost, now, old
			k.reason = "the answer to a rotation was lost"
			k.alert.Store(true)
			log.ErrorContext(ctx, "ALERT: the answer to the service token's rotation was lost; GitLab may have revoked the token. Not retrying: the old token is checked at GitLab after probe_after; if GitLab rejects it, install a new token (see the README: the service token's recovery)",
				"error", err.Error(), "probe_at", now.Add(k.cfg.ProbeAfter).Format(time.RFC3339))
		case errors.Is(err, ErrRevoked):
			release()
			k.lockedOutLocked(ctx, log, "GitLab rejected the service token when asked to rotate it")
		default:
			release()
			k.emit(EventRefused)
			k.retryAt = now.Add(time.Hour)
			log.ErrorContext(ctx, "GitLab refused to rotate the service token; nothing changed, trying again in an hour", "error", err.Error())
		}
		return
	}
	// Persist before first use.
	persisted := true
	if err := w.commit(next); err != nil {
		persisted = false
		log.ErrorContext(ctx, "ALERT: the service token was rotated but its successor could not be written to the file; it is used from memory and written again at every tick. Do not restart before this clears.",
			"error", err.Error())
	}
	k.secret.Store(&next)
	k.setInfoLocked(info)
	if persisted {
		k.setStateLocked(stateOK, "")
		k.emit(EventRotated)
	} else {
		k.setStateLocked(stateUnpersisted, "the rotated token is not on disk")
		k.emit(EventUnpersisted)
	}
	log.InfoContext(ctx, "service token rotated", "new_token_sha256", fingerprint.Of(next), "new_token_id", info.ID,
		"expires_at", info.ExpiresAt.Format(time.DateOnly), "persisted", persisted)
	if k.cfg.Store != nil {
		k.publish = &publication{old: old, next: next}
		k.publishLocked(ctx)
	}
}

func (k *Keeper) lockedOutLocked(ctx context.Context, log *slog.Logger, reason string) {
	if k.state != stateLockedOut {
		k.emit(EventRevoked)
	}
	k.setStateLocked(stateLockedOut, reason)
	log.ErrorContext(ctx, "ALERT: "+reason+": minting fails until a valid token is installed (see the README: the service token's recovery)")
}

// publishLocked puts a completed rotation into the store for the other replicas.
func (k *Keeper) publishLocked(ctx context.Context) {
	p := k.publish
	if p == nil || k.cfg.Store == nil {
		return
	}
	sealed, err := seal(p.old, p.next)
	if err == nil {
		err = k.cfg.Store.CompleteRotation(ctx, fingerprint.Of(p.old), k.cfg.Holder, fingerprint.Of(p.next), sealed, k.now())
	}
	if err != nil {
		k.emit(EventPublishError)
		k.log.ErrorContext(ctx, "the rotated service token could not be published to the store: other replicas cannot take it up yet; trying again", "error", err.Error())
		return
	}
	k.publish = nil
}

// adoptLocked follows the store's chain of rotations from the token in force
// and takes up the newest successor.
func (k *Keeper) adoptLocked(ctx context.Context) {
	if k.cfg.Store == nil {
		return
	}
	for range 32 { // a chain longer than this is a store gone wrong
		cur := k.Token()
		row, err := k.cfg.Store.GetRotation(ctx, fingerprint.Of(cur))
		if errors.Is(err, ledger.ErrNotFound) {
			return
		}
		if err != nil {
			k.log.WarnContext(ctx, "cannot look for a rotated service token in the store", "error", err.Error())
			return
		}
		if !row.Done() {
			return
		}
		next, err := unseal(cur, row.Sealed)
		if err == nil && fingerprint.Of(next) != row.NewSHA256 {
			err = errors.New("the successor does not match its fingerprint")
		}
		if err != nil {
			k.log.ErrorContext(ctx, "a rotated service token in the store cannot be taken up", "token_sha256", row.OldSHA256, "error", err.Error())
			return
		}
		persisted := true
		if err := writeFile(k.cfg.File, next); err != nil {
			persisted = false
			k.log.ErrorContext(ctx, "ALERT: the service token another replica rotated to could not be written to the file; it is used from memory", "error", err.Error())
		}
		k.secret.Store(&next)
		k.infoKnown, k.infoAt = false, time.Time{}
		k.lostOld = ""
		if persisted {
			k.setStateLocked(stateOK, "")
		} else {
			k.setStateLocked(stateUnpersisted, "the adopted token is not on disk")
		}
		k.emit(EventAdopted)
		k.log.InfoContext(ctx, "took up the service token another replica rotated to", "file", k.cfg.File,
			"holder", row.Holder, "token_sha256", row.OldSHA256, "new_token_sha256", row.NewSHA256, "persisted", persisted)
	}
}

// probeLostLocked asks GitLab, long after a lost answer, whether the old
// token still works: then the rotation did not happen and may be tried again.
func (k *Keeper) probeLostLocked(ctx context.Context) {
	old := k.lostOld
	log := k.log.With("file", k.cfg.File, "token_sha256", fingerprint.Of(old))
	_, err := k.cfg.GitLab.SelfToken(ctx, old)
	switch {
	case err == nil:
		if k.cfg.Store != nil {
			if rerr := k.cfg.Store.ReleaseRotation(ctx, fingerprint.Of(old), k.cfg.Holder); rerr != nil {
				log.WarnContext(ctx, "cannot release the rotation claim", "error", rerr.Error())
				return
			}
		}
		k.setStateLocked(stateOK, "")
		k.lostOld = ""
		k.emit(EventNotRotated)
		log.WarnContext(ctx, "after the lost rotation answer, GitLab still accepts the old service token: the rotation did not happen; it will be tried again")
	case errors.Is(err, ErrRevoked):
		k.lostOld = ""
		k.lockedOutLocked(ctx, log, "the answer to a rotation was lost and GitLab has revoked the old service token: its successor is lost")
	default:
		k.lostAt = k.now()
		log.WarnContext(ctx, "after the lost rotation answer, GitLab could not be asked about the old token; asking again later", "error", err.Error())
	}
}
