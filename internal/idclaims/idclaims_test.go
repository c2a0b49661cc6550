package idclaims

import "testing"

func TestCatalogue(t *testing.T) {
	for name, want := range map[string]Spec{
		"project_path":    {Encoding: String, Kind: Path, Matchable: true},
		"runner_id":       {Encoding: Int, Kind: ID, Matchable: true},
		"ref_protected":   {Encoding: BoolString, Kind: Bool, Matchable: true},
		"groups_direct":   {Encoding: StringList},
		"user_identities": {Encoding: ObjectList},
		"target_audience": {Encoding: String},
	} {
		got, ok := Lookup(name)
		if !ok || got.Encoding != want.Encoding || got.Kind != want.Kind || got.Matchable != want.Matchable {
			t.Errorf("%s = %+v, %v; want %+v", name, got, ok, want)
		}
	}
	if s, ok := Lookup("ref_type"); !ok || s.Kind != Enum || len(s.Values) != 2 {
		t.Errorf("ref_type = %+v", s)
	}
	if _, ok := Lookup("aud"); ok {
		t.Error("aud is in the catalogue: it is the verifier's")
	}
}
