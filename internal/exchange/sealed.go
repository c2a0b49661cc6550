package exchange

import (
	"context"

	"gltoken.dev/gltoken/internal/fingerprint"
	"gltoken.dev/gltoken/internal/idtoken"
	"gltoken.dev/gltoken/internal/ledger"
	"gltoken.dev/gltoken/internal/policy"
)

// Sealer encrypts the secrets the ledger keeps (seal.Keyring). Seal uses
// the current key and names it; Open decrypts with the key named, and fails
// for a key it does not hold.
type Sealer interface {
	Seal(recordID string, secret []byte) (keyID string, sealed []byte, err error)
	Open(recordID, keyID string, sealed []byte) ([]byte, error)
}

// reusableFromLedger is how many live credentials of a grant fromLedger
// looks at: a few, one of which normally fits.
const reusableFromLedger = 4

// sealSecret keeps the secret of the Active record id sealed in the ledger,
// when the daemon has a ledger key. A failure is logged and nothing else:
// the credential is still handed out, it is only not reusable after a
// restart.
func (s *Service) sealSecret(ctx context.Context, id, secret string) {
	if s.cfg.Sealer == nil {
		return
	}
	keyID, sealed, err := s.cfg.Sealer.Seal(id, []byte(secret))
	if err == nil {
		err = s.store.SealSecret(ctx, id, keyID, sealed)
	}
	if err != nil {
		s.cfg.Logger.Warn("the secret was not kept sealed in the ledger; the credential is not reusable after a restart",
			"ledger_id", id, "error", err)
	}
}

// fromLedger looks, when the memory cache has nothing for the reuse key,
// in the ledger for a live credential of the grant whose secret is sealed
// under a key the daemon holds (minted before a restart, or by another
// replica), and caches the longest-lived one that fits for other jobs. It
// reports whether it cached one; the caller hands it out through
// fromShared, which records the job as its holder.
func (s *Service) fromLedger(ctx context.Context, reuse string, mreq MintRequest, tok *idtoken.Token, rule ruleID) bool {
	if s.cfg.Sealer == nil {
		return false
	}
	now := s.cfg.Now()
	recs, err := s.store.Reusable(ctx, reuse, now.Add(s.cfg.CacheMargin), tok.Expiry, reusableFromLedger)
	if err != nil {
		s.cfg.Logger.Warn("the ledger could not be asked for a reusable credential; minting", "error", err)
		return false
	}
	role := 0
	if mreq.Kind.AccessToken() {
		role = mreq.AccessLevel
	}
	for _, rec := range recs {
		if rec.State != ledger.Active || len(rec.SealedSecret) == 0 {
			continue
		}
		secret, err := s.cfg.Sealer.Open(rec.ID, rec.SecretKeyID, rec.SealedSecret)
		if err != nil {
			// Sealed under a key no longer in the key file, or altered.
			s.cfg.Logger.Info("a reusable credential in the ledger does not unseal; skipped",
				"ledger_id", rec.ID, "key_id", rec.SecretKeyID, "error", err)
			continue
		}
		if fingerprint.Of(string(secret)) != rec.SecretSHA256 {
			continue
		}
		cred := Credential{Kind: rec.Kind, Owner: rec.Owner, OwnerPath: rec.OwnerPath, GitLabID: rec.GitLabID,
			Name: "gltoken-" + rec.ID, Username: rec.Username, Secret: string(secret), ExpiresAt: rec.ExpiresAt}
		s.cache.put(sharedEntryKey(rec.ID), cached{ledgerID: rec.ID, cred: cred, scopes: rec.Scopes, role: role, reuse: reuse, rule: rule}, now)
		return true
	}
	return false
}

// DropChangedRules forgets every cached credential whose rule pol no
// longer has, or has with other content: after a policy reload no job is
// handed, from the cache, a credential a changed rule would not grant. It
// returns how many cache entries it dropped. The credentials themselves are
// not revoked: each lives on until its TTL (or its jobs' end), as it would
// have without the reload, and the jobs holding it keep it.
func (s *Service) DropChangedRules(pol *policy.Policy) int {
	return s.cache.dropRules(func(r ruleID) bool {
		fp, ok := pol.RuleFingerprint(r.name)
		return ok && fp == r.fp && !pol.Shadow(r.name) // a rule now in shadow grants nothing
	})
}
