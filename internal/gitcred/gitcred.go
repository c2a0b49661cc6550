// Package gitcred speaks git's credential-helper protocol (gitcredentials(7),
// git-credential(1)): Read parses the attributes git sends to a helper, Write
// prints the answer. It knows nothing of HTTP or the gltoken daemon; the helper's
// main joins this codec to the daemon client.
package gitcred

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// MaxLine is the longest attribute line Read accepts, newline excluded.
	MaxLine = 65535
	// MaxInput is the most Read consumes in total.
	MaxInput = 1 << 20
)

var (
	// ErrNoPath: git did not send "path", which it does only when
	// credential.<url>.useHttpPath is true.
	ErrNoPath = errors.New("git sent no path (credential.useHttpPath is not set)")
	// ErrIncomplete: git sent no protocol or no host.
	ErrIncomplete = errors.New("git sent no protocol or host")
	// ErrLineTooLong: a line exceeds MaxLine.
	ErrLineTooLong = errors.New("credential line longer than 65535 bytes")
	// ErrInputTooLarge: the input exceeds MaxInput.
	ErrInputTooLarge = errors.New("credential input larger than 1 MiB")
	// ErrMalformed: a line without "=" or with a NUL byte.
	ErrMalformed = errors.New("malformed credential line")
	// ErrUnsafeValue: Write was asked to print a value git cannot take.
	ErrUnsafeValue = errors.New("credential value contains CR, LF or NUL")
)

// Request is what git asks a helper. Fields git may send more than once keep
// the last value; multi-valued keys (key[]) keep every value in order.
type Request struct {
	Protocol          string
	Host              string // with ":port" when git has one
	Path              string // without a leading slash; only with useHttpPath
	Username          string
	Password          string // on store and erase
	PasswordExpiryUTC string // raw, as git sent it
	OAuthRefreshToken string
	WWWAuth           []string // wwwauth[] (git 2.41+)
	Capability        []string // capability[] (git 2.46+)
	URL               string   // url=, as `git credential` accepts it
	// Extra holds every other key, unparsed; a multi-valued key is stored under
	// its name with the brackets ("foo[]").
	Extra map[string][]string
}

// Read parses key=value lines until a blank line or EOF. It is tolerant the way
// git is: unknown keys are kept in Extra and otherwise ignored, a trailing CR is
// dropped, and an empty "key[]=" resets that list. It refuses lines longer than
// MaxLine, input larger than MaxInput, and lines without "=" (git refuses them too).
func Read(r io.Reader) (*Request, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, MaxInput+1), 4096)
	req := &Request{}
	total := 0
	for lineNo := 1; ; lineNo++ {
		line, n, err := readLine(br)
		total += n
		if total > MaxInput {
			return nil, ErrInputTooLarge
		}
		eof := errors.Is(err, io.EOF)
		if err != nil && !eof {
			if errors.Is(err, ErrLineTooLong) {
				return nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
			return nil, fmt.Errorf("read credential: %w", err)
		}
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return req, nil
		}
		if err := req.set(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if eof {
			return req, nil
		}
	}
}

// readLine returns one line without its LF and the number of bytes it
// consumed. At EOF it returns what is left and io.EOF. A CR before the LF does
// not count against MaxLine.
func readLine(br *bufio.Reader) (string, int, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		b = append(b, chunk...)
		n := len(b)
		if n > 0 && b[n-1] == '\n' {
			n--
		}
		if n > MaxLine+1 || (n == MaxLine+1 && !errors.Is(err, bufio.ErrBufferFull) && b[n-1] != '\r') {
			return "", len(b), ErrLineTooLong
		}
		switch {
		case err == nil:
			return string(b[:n]), len(b), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return string(b[:n]), len(b), err
		}
	}
}

func (req *Request) set(line string) error {
	if strings.IndexByte(line, 0) >= 0 {
		return fmt.Errorf("%w: NUL byte", ErrMalformed)
	}
	key, value, ok := strings.Cut(line, "=")
	if !ok {
		return fmt.Errorf("%w: no '='", ErrMalformed)
	}
	if name, multi := strings.CutSuffix(key, "[]"); multi {
		switch name {
		case "wwwauth":
			req.WWWAuth = appendOrReset(req.WWWAuth, value)
		case "capability":
			req.Capability = appendOrReset(req.Capability, value)
		default:
			req.extra()[key] = appendOrReset(req.Extra[key], value)
		}
		return nil
	}
	switch key {
	case "protocol":
		req.Protocol = value
	case "host":
		req.Host = value
	case "path":
		req.Path = value
	case "username":
		req.Username = value
	case "password":
		req.Password = value
	case "password_expiry_utc":
		req.PasswordExpiryUTC = value
	case "oauth_refresh_token":
		req.OAuthRefreshToken = value
	case "url":
		req.URL = value
	default:
		req.extra()[key] = []string{value}
	}
	return nil
}

func (req *Request) extra() map[string][]string {
	if req.Extra == nil {
		req.Extra = map[string][]string{}
	}
	return req.Extra
}

func appendOrReset(list []string, value string) []string {
	if value == "" {
		return nil
	}
	return append(list, value)
}

// Resource is the repository URL the request is about: protocol://host/path.
// git sends path without a leading slash (one is tolerated); nothing else is
// stripped, so ".git" stays, except a route below the repository: git-lfs asks
// for its endpoint, "group/proj.git/info/lfs", when the remote's URL does not
// give it the host's scheme (an SSH remote), and the credential for that is
// the repository's ("group/proj.git"; no GitLab path segment ends in ".git").
// When git sent only url=, that URL is used.
// A missing path is ErrNoPath, a missing protocol or host ErrIncomplete.
func (req *Request) Resource() (string, error) {
	protocol, host, path := req.Protocol, req.Host, req.Path
	if protocol == "" && host == "" && req.URL != "" {
		u, err := url.Parse(req.URL)
		if err != nil {
			return "", fmt.Errorf("%w: unparsable url", ErrIncomplete)
		}
		protocol, host, path = u.Scheme, u.Host, u.Path
	}
	if protocol == "" || host == "" {
		return "", ErrIncomplete
	}
	if strings.ContainsAny(host, "/?#@\\ \t") || strings.ContainsAny(protocol, ":/?#@ \t") {
		return "", fmt.Errorf("%w: invalid protocol or host", ErrIncomplete)
	}
	path = strings.TrimPrefix(path, "/")
	if i := strings.Index(path, ".git/"); i > 0 {
		path = path[:i+len(".git")]
	}
	if path == "" {
		return "", ErrNoPath
	}
	return protocol + "://" + host + "/" + path, nil
}

// Credential is a helper's answer to get.
type Credential struct {
	Username       string
	Password       string
	PasswordExpiry time.Time // zero: not sent
	Quit           bool      // quit=true: git stops asking other helpers and the user
}

// Write prints c the way git reads it: username then password (always both
// when either is set), password_expiry_utc in unix seconds when set, quit=true
// when asked. A value git cannot take (CR, LF or NUL) is refused with
// ErrUnsafeValue and nothing is written; the error never quotes the value.
func Write(w io.Writer, c Credential) error {
	var b bytes.Buffer
	if c.Username != "" || c.Password != "" {
		if err := checkValue("username", c.Username); err != nil {
			return err
		}
		if err := checkValue("password", c.Password); err != nil {
			return err
		}
		b.WriteString("username=" + c.Username + "\n")
		b.WriteString("password=" + c.Password + "\n")
		if !c.PasswordExpiry.IsZero() {
			sec := c.PasswordExpiry.Unix()
			if sec <= 0 {
				return fmt.Errorf("password expiry %d is not a positive unix time", sec)
			}
			b.WriteString("password_expiry_utc=" + strconv.FormatInt(sec, 10) + "\n")
		}
	}
	if c.Quit {
		b.WriteString("quit=true\n")
	}
	_, err := w.Write(b.Bytes())
	return err
}

func checkValue(key, v string) error {
	if strings.ContainsAny(v, "\r\n\x00") {
		return fmt.Errorf("%s: %w", key, ErrUnsafeValue)
	}
	return nil
}
