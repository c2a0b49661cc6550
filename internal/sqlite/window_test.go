package sqlite

import (
	"path/filepath"
	"testing"

	"gltoken.dev/gltoken/internal/ledger/ledgertest"
)

func TestWindowContract(t *testing.T) {
	ledgertest.RunWindow(t, func(t *testing.T) ledgertest.WindowStore {
		return openTB(t, filepath.Join(t.TempDir(), "state.db"))
	})
}
