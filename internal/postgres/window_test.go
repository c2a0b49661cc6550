package postgres

import (
	"testing"

	"gltoken.dev/gltoken/internal/ledger/ledgertest"
)

func TestWindowContract(t *testing.T) {
	testDSN(t)
	ledgertest.RunWindow(t, func(t *testing.T) ledgertest.WindowStore {
		return openTB(t, freshSchema(t))
	})
}
