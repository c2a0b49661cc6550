package sqlite

import (
	"context"
	"database/sql"
	"errors"
)

// statements are the writer's hot statements, prepared once: a shared
// credential's hand-out (AddHolder) runs them on every exchange, and
// SQLite's prepare was a tenth of the daemon's CPU there. Preparing them
// on the writer, which has exactly one connection, lets every transaction
// use them as they are (Tx.StmtContext reuses a statement prepared on the
// transaction's connection).
type statements struct {
	holderCheck  *sql.Stmt // job id, ledger id -> state, any holder, any still holding, this job's hold (NULL: none; else still held)
	holderInsert *sql.Stmt // one ledger_holders row
}

func (st *statements) prepare(ctx context.Context, db *sql.DB) error {
	var err error
	// Existence probes, never counts: a shared credential can have
	// thousands of holders. Each probe stops at its first index entry (the
	// primary key, and ledger_holders_holding for "anyone still holds it").
	if st.holderCheck, err = db.PrepareContext(ctx, `SELECT r.state,
			EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id),
			EXISTS (SELECT 1 FROM ledger_holders h WHERE h.ledger_id = r.id AND h.released_at IS NULL),
			(SELECT h.released_at IS NULL FROM ledger_holders h WHERE h.ledger_id = r.id AND h.job_id = ?)
		FROM ledger_records r WHERE r.id = ?`); err != nil {
		return err
	}
	if st.holderInsert, err = db.PrepareContext(ctx, `INSERT INTO ledger_holders
		(ledger_id, job_id, project_id, pipeline_id, token_expires_at, held_since) VALUES (?, ?, ?, ?, ?, ?)`); err != nil {
		return errors.Join(err, st.close())
	}
	return nil
}

func (st *statements) close() error {
	var errs []error
	for _, s := range []*sql.Stmt{st.holderCheck, st.holderInsert} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}
