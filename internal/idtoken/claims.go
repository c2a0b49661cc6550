package idtoken

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"gltoken.dev/gltoken/internal/idclaims"
)

// header is what Verify needs from a JOSE header that passed checkStructure.
type header struct {
	alg, kid string
}

// forbiddenHeaders would let a token choose its own key or demand extensions we do not
// implement; GitLab never sets them.
var forbiddenHeaders = []string{"jku", "x5u", "jwk", "x5c", "crit"}

// checkStructure checks the compact serialisation and the header strictly, before any key or
// claim is looked at: exactly three non-empty base64url segments, a header that is one JSON
// object without duplicate members, an accepted alg, no forbidden parameter, a kid.
func checkStructure(raw string, algs []string) (header, error) {
	var h header
	if n := strings.Count(raw, "."); n != 2 {
		return h, fmt.Errorf("%w: %d segments, want 3", ErrMalformed, n+1)
	}
	segs := strings.SplitN(raw, ".", 3)
	if segs[0] == "" {
		return h, fmt.Errorf("%w: empty header", ErrMalformed)
	}
	hb, err := base64.RawURLEncoding.Strict().DecodeString(segs[0])
	if err != nil {
		return h, fmt.Errorf("%w: header is not base64url: %v", ErrMalformed, err)
	}
	members, err := decodeObject(hb)
	if err != nil {
		return h, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}

	algRaw, ok := members["alg"]
	if !ok {
		return h, fmt.Errorf("%w: header has no alg", ErrAlgorithm)
	}
	if err := json.Unmarshal(algRaw, &h.alg); err != nil {
		return h, fmt.Errorf("%w: alg is not a string", ErrAlgorithm)
	}
	if !slices.Contains(algs, h.alg) {
		return h, fmt.Errorf("%w: alg %s, accepted %v", ErrAlgorithm, quote(h.alg), algs)
	}
	for _, name := range forbiddenHeaders {
		if _, ok := members[name]; ok {
			return h, fmt.Errorf("%w: %q", ErrForbiddenHeader, name)
		}
	}
	if typRaw, ok := members["typ"]; ok {
		var typ string
		if err := json.Unmarshal(typRaw, &typ); err != nil {
			return h, fmt.Errorf("%w: typ is not a string", ErrMalformed)
		}
		if !strings.EqualFold(typ, "JWT") {
			return h, fmt.Errorf("%w: typ %s, want \"JWT\"", ErrMalformed, quote(typ))
		}
	}
	kidRaw, ok := members["kid"]
	if !ok {
		return h, fmt.Errorf("%w: header has no kid", ErrMalformed)
	}
	if err := json.Unmarshal(kidRaw, &h.kid); err != nil || h.kid == "" {
		return h, fmt.Errorf("%w: kid must be a non-empty string", ErrMalformed)
	}
	// Checked after alg so that an unsigned ("none") token is reported as such.
	if segs[1] == "" || segs[2] == "" {
		return h, fmt.Errorf("%w: empty payload or signature", ErrMalformed)
	}
	return h, nil
}

// decodeObject decodes one JSON object into its members, refusing duplicate names (parsers
// disagree on which one wins) and anything after the object.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	members := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("member name is not a string")
		}
		if _, dup := members[name]; dup {
			return nil, fmt.Errorf("duplicate member %s", quote(name))
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, err
		}
		members[name] = val
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return members, nil
}

// maxNumericDate is 9999-12-31T23:59:59Z; later (or negative) times are malformed.
const maxNumericDate = 253402300799

// claimSet is the payload, decoded strictly. It implements jwt.Claims so that jwt/v5 validates
// exp, nbf, iat, iss and aud, and jwt.ClaimsValidator for the claims we also require.
type claimSet struct {
	iss, sub, jti string
	aud           []string
	exp, iat, nbf time.Time // zero when absent
	claims        map[string]string
	lists         map[string][]string
	decodeErr     error // why UnmarshalJSON failed, for an error message without jwt's wrapping
}

var (
	_ jwt.Claims          = (*claimSet)(nil)
	_ jwt.ClaimsValidator = (*claimSet)(nil)
)

// UnmarshalJSON is called by jwt/v5 with the decoded payload. Any type error is ErrMalformed.
func (c *claimSet) UnmarshalJSON(b []byte) error {
	members, err := decodeObject(b)
	if err != nil {
		c.decodeErr = fmt.Errorf("%w: payload: %v", ErrMalformed, err)
		return c.decodeErr
	}
	c.claims = make(map[string]string, len(members))
	for name, raw := range members {
		if err := c.set(name, raw); err != nil {
			c.decodeErr = fmt.Errorf("%w: claim %s: %v", ErrMalformed, quote(name), err)
			return c.decodeErr
		}
	}
	return nil
}

func (c *claimSet) set(name string, raw json.RawMessage) error {
	kind := jsonKind(raw)
	if kind == 'n' { // null: treated as absent
		return nil
	}
	switch {
	case name == "iss" || name == "sub" || name == "jti":
		s, err := asString(raw, kind)
		if err != nil {
			return err
		}
		switch name {
		case "iss":
			c.iss = s
		case "sub":
			c.sub = s
		case "jti":
			c.jti = s
		}
		c.claims[name] = s
		return nil
	case name == "aud":
		if kind == '"' {
			s, _ := asString(raw, kind)
			c.aud = []string{s}
			return nil
		}
		list, err := asStringList(raw, kind)
		if err != nil {
			return errors.New("want a string or an array of strings")
		}
		c.aud = list
		return nil
	case name == "exp" || name == "iat" || name == "nbf":
		t, err := asNumericDate(raw, kind)
		if err != nil {
			return err
		}
		switch name {
		case "exp":
			c.exp = t
		case "iat":
			c.iat = t
		case "nbf":
			c.nbf = t
		}
		c.claims[name] = normaliseNumber(string(raw))
		return nil
	}
	// GitLab's claims by their JSON types (idclaims): ids are strings,
	// runner_id is a number, ref_protected and environment_protected are the
	// strings "true"/"false".
	spec, known := idclaims.Lookup(name)
	switch {
	case !known:
		// A claim GitLab does not document (yet): keep any scalar, string lists too.
		switch kind {
		case '"':
			s, err := asString(raw, kind)
			if err != nil {
				return err
			}
			c.claims[name] = s
		case '0':
			c.claims[name] = normaliseNumber(string(raw))
		case 't', 'f':
			c.claims[name] = string(raw)
		case '[':
			if list, err := asStringList(raw, kind); err == nil {
				c.addList(name, list)
			}
		}
	case spec.Encoding == idclaims.String:
		s, err := asString(raw, kind)
		if err != nil {
			return err
		}
		c.claims[name] = s
	case spec.Encoding == idclaims.BoolString:
		s, err := asString(raw, kind)
		if err != nil {
			return err
		}
		if s != "true" && s != "false" {
			return fmt.Errorf("want \"true\" or \"false\", got %s", quote(s))
		}
		c.claims[name] = s
	case spec.Encoding == idclaims.Int:
		if kind != '0' {
			return errors.New("want an integer")
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return errors.New("want an integer")
		}
		c.claims[name] = strconv.FormatInt(n, 10)
	case spec.Encoding == idclaims.StringList:
		list, err := asStringList(raw, kind)
		if err != nil {
			return err
		}
		c.addList(name, list)
	case spec.Encoding == idclaims.ObjectList:
		if kind != '[' {
			return errors.New("want an array")
		}
		// Dropped: not usable for matching.
	}
	return nil
}

func (c *claimSet) addList(name string, list []string) {
	if c.lists == nil {
		c.lists = make(map[string][]string)
	}
	c.lists[name] = list
}

// jsonKind classifies a valid JSON value by its first byte: '"', '{', '[', 't', 'f', 'n' or '0'
// for a number.
func jsonKind(raw json.RawMessage) byte {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 {
		return 0
	}
	switch b[0] {
	case '"', '{', '[', 't', 'f', 'n':
		return b[0]
	}
	return '0'
}

func asString(raw json.RawMessage, kind byte) (string, error) {
	if kind != '"' {
		return "", errors.New("want a string")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s, nil
}

func asStringList(raw json.RawMessage, kind byte) ([]string, error) {
	if kind != '[' {
		return nil, errors.New("want an array of strings")
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, err
	}
	list := make([]string, len(elems))
	for i, e := range elems {
		s, err := asString(e, jsonKind(e))
		if err != nil {
			return nil, errors.New("want an array of strings")
		}
		list[i] = s
	}
	return list, nil
}

func asNumericDate(raw json.RawMessage, kind byte) (time.Time, error) {
	if kind != '0' {
		return time.Time{}, errors.New("want a number")
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, errors.New("want a number of seconds between 1970 and 9999")
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

// normaliseNumber renders a JSON number in plain decimal: integers as they are, others without
// an exponent.
func normaliseNumber(s string) string {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return strconv.FormatInt(n, 10)
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) {
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return strconv.FormatInt(int64(f), 10)
		}
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return s
}

func numericDate(t time.Time) *jwt.NumericDate {
	if t.IsZero() {
		return nil
	}
	return jwt.NewNumericDate(t)
}

func (c *claimSet) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.exp), nil }
func (c *claimSet) GetIssuedAt() (*jwt.NumericDate, error)       { return numericDate(c.iat), nil }
func (c *claimSet) GetNotBefore() (*jwt.NumericDate, error)      { return numericDate(c.nbf), nil }
func (c *claimSet) GetIssuer() (string, error)                   { return c.iss, nil }
func (c *claimSet) GetSubject() (string, error)                  { return c.sub, nil }
func (c *claimSet) GetAudience() (jwt.ClaimStrings, error)       { return c.aud, nil }

// Validate adds to jwt/v5's checks the claims it does not require itself.
func (c *claimSet) Validate() error {
	if c.sub == "" || c.iat.IsZero() {
		return ErrMissingClaim
	}
	return nil
}

// missing names the required claims that are absent (or empty).
func (c *claimSet) missing() []string {
	var m []string
	if c.iss == "" {
		m = append(m, "iss")
	}
	if c.sub == "" {
		m = append(m, "sub")
	}
	if len(c.aud) == 0 || (len(c.aud) == 1 && c.aud[0] == "") {
		m = append(m, "aud")
	}
	if c.exp.IsZero() {
		m = append(m, "exp")
	}
	if c.iat.IsZero() {
		m = append(m, "iat")
	}
	return m
}

func (c *claimSet) token(kid string) *Token {
	return &Token{
		Issuer:     c.iss,
		Subject:    c.sub,
		ID:         c.jti,
		Audience:   c.aud,
		IssuedAt:   c.iat,
		NotBefore:  c.nbf,
		Expiry:     c.exp,
		Claims:     c.claims,
		ClaimLists: c.lists,
		KeyID:      kid,
	}
}

// ParseClaims decodes a token payload (a JSON object of claims) exactly as
// Verify does, without checking a signature or any time: the string form of
// every claim the policy can match, or ErrMalformed for a claim of the wrong
// type. `exchanged explain` uses it so its decision is the daemon's.
func ParseClaims(payload []byte) (map[string]string, error) {
	var c claimSet
	if err := c.UnmarshalJSON(payload); err != nil {
		return nil, err
	}
	return c.claims, nil
}
