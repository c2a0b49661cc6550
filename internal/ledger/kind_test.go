package ledger

import "testing"

func TestKindPredicates(t *testing.T) {
	for _, tc := range []struct {
		k                     Kind
		valid, access, deploy bool
	}{
		{ProjectDeployToken, true, false, true},
		{GroupDeployToken, true, false, true},
		{ProjectAccessToken, true, true, false},
		{GroupAccessToken, true, true, false},
		{"personal_access_token", false, false, false},
		{"", false, false, false},
	} {
		if tc.k.Valid() != tc.valid || tc.k.AccessToken() != tc.access || tc.k.DeployToken() != tc.deploy {
			t.Errorf("%q: Valid %v AccessToken %v DeployToken %v", tc.k, tc.k.Valid(), tc.k.AccessToken(), tc.k.DeployToken())
		}
	}
}
