package exchange

import (
	"context"
	"errors"
	"fmt"

	"gltoken.dev/gltoken/internal/ledger"
)

// RevokeNow ends the credential with ledger id id at once, with its whole
// family, through the same path as at its TTL: revoked at GitLab, recorded in
// the ledger, an audit event with outcome operator_revoked. A pending intent
// is reconciled by its name. A revocation GitLab does not confirm stays live
// and is retried by the reaper with back-off. It returns the record as the
// ledger has it afterwards; a record already settled is returned unchanged.
// Its audit events carry a request id of their own ("operator-…").
func (r *Reaper) RevokeNow(ctx context.Context, id string) (ledger.Record, error) {
	return r.revokeNow(ctx, id, backgroundID(actionOperator))
}

func (r *Reaper) revokeNow(ctx context.Context, id, requestID string) (ledger.Record, error) {
	if id == "" {
		return ledger.Record{}, errors.New("revoke: no ledger id")
	}
	rec, err := r.store.Get(ctx, id)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("revoke %s: %w", id, err)
	}
	if rec.State != ledger.Pending && rec.State != ledger.Active {
		return rec, nil
	}
	r.settleAs(ctx, rec, OutcomeOperatorRevoked, requestID)
	after, err := r.store.Get(ctx, id)
	if err != nil {
		return rec, fmt.Errorf("revoke %s: read it back: %w", id, err)
	}
	return after, nil
}

// RevokeJob ends, as RevokeNow does, every live credential job jobID holds,
// also ones other jobs share (an operator ending a job's credentials means
// all of them), under one request id. It returns the records as the ledger
// has them afterwards.
func (r *Reaper) RevokeJob(ctx context.Context, jobID string) ([]ledger.Record, error) {
	if jobID == "" {
		return nil, errors.New("revoke: no job id")
	}
	holds, err := r.store.Holds(ctx, jobID)
	if err != nil {
		return nil, fmt.Errorf("revoke job %s: %w", jobID, err)
	}
	var out []ledger.Record
	requestID := backgroundID(actionOperator)
	for _, h := range holds {
		rec, err := r.revokeNow(ctx, h.LedgerID, requestID)
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}
