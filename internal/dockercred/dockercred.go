// Package dockercred speaks docker's credential-helper protocol
// (docker/docker-credential-helpers): a binary named docker-credential-NAME is
// run with one action (get, store, erase, list, version), reads its input on
// stdin and answers on stdout; every error is a message on stdout and exit
// status 1. Handle runs one action against a Helper; the small codec functions
// it uses are exported for callers that compose their own. It knows nothing of
// the gltoken daemon.
package dockercred

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
)

// MaxInput is the most any action reads from stdin.
const MaxInput = 1 << 20

// NotFoundMessage is the exact text docker recognises as "no credentials here";
// it then goes on without credentials (anonymous pulls).
const NotFoundMessage = "credentials not found in native keychain"

var (
	// ErrNotFound is printed as NotFoundMessage.
	ErrNotFound = errors.New(NotFoundMessage)
	// ErrMissingServerURL and ErrMissingUsername are docker's own messages.
	ErrMissingServerURL = errors.New("no credentials server URL")
	ErrMissingUsername  = errors.New("no credentials username")
	// ErrInputTooLarge: stdin held more than MaxInput bytes.
	ErrInputTooLarge = errors.New("credential helper input larger than 1 MiB")
)

// Credentials is the JSON object of get and store.
type Credentials struct {
	ServerURL string
	Username  string
	Secret    string
}

// Helper does the work behind each action.
type Helper interface {
	// Get returns the credentials for serverURL, or an error wrapping ErrNotFound.
	Get(ctx context.Context, serverURL string) (Credentials, error)
	Store(ctx context.Context, c Credentials) error
	Erase(ctx context.Context, serverURL string) error
	// List maps server URLs to usernames.
	List(ctx context.Context) (map[string]string, error)
}

// Handle runs action with h and returns the exit status: 0, or 1 with the
// error's message printed on stdout as docker expects. An error wrapping
// ErrNotFound prints exactly NotFoundMessage. version is the line printed by
// the version action.
func Handle(ctx context.Context, h Helper, action string, stdin io.Reader, stdout io.Writer, version string) int {
	err := handle(ctx, h, action, stdin, stdout, version)
	if err == nil {
		return 0
	}
	return Fail(stdout, err)
}

func handle(ctx context.Context, h Helper, action string, stdin io.Reader, stdout io.Writer, version string) error {
	switch action {
	case "get":
		serverURL, err := ReadServerURL(stdin)
		if err != nil {
			return err
		}
		c, err := h.Get(ctx, serverURL)
		if err != nil {
			return err
		}
		return WriteCredentials(stdout, c)
	case "store":
		c, err := ReadCredentials(stdin)
		if err != nil {
			return err
		}
		return h.Store(ctx, c)
	case "erase":
		serverURL, err := ReadServerURL(stdin)
		if err != nil {
			return err
		}
		return h.Erase(ctx, serverURL)
	case "list":
		m, err := h.List(ctx)
		if err != nil {
			return err
		}
		return WriteList(stdout, m)
	case "version":
		_, err := fmt.Fprintln(stdout, version)
		return err
	}
	// docker-credential-helpers' own wording, capital and all.
	//lint:ignore ST1005 the message is docker's protocol, word for word
	return fmt.Errorf("Unknown credential action `%s`", oneLine(action))
}

// Fail prints err as docker expects it (one line on stdout) and returns 1.
func Fail(stdout io.Writer, err error) int {
	msg := oneLine(err.Error())
	if errors.Is(err, ErrNotFound) {
		msg = NotFoundMessage
	}
	fmt.Fprintln(stdout, msg)
	return 1
}

func readAll(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	if len(b) > MaxInput {
		return nil, ErrInputTooLarge
	}
	return b, nil
}

// ReadServerURL reads get's and erase's input: the server URL, whitespace trimmed.
func ReadServerURL(r io.Reader) (string, error) {
	b, err := readAll(r)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", ErrMissingServerURL
	}
	return s, nil
}

// ReadCredentials reads store's input, which must name ServerURL and Username.
func ReadCredentials(r io.Reader) (Credentials, error) {
	b, err := readAll(r)
	if err != nil {
		return Credentials{}, err
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, fmt.Errorf("read credentials: %w", err)
	}
	if c.ServerURL == "" {
		return Credentials{}, ErrMissingServerURL
	}
	if c.Username == "" {
		return Credentials{}, ErrMissingUsername
	}
	return c, nil
}

// WriteCredentials prints get's answer.
func WriteCredentials(w io.Writer, c Credentials) error {
	return json.NewEncoder(w).Encode(c)
}

// WriteList prints list's answer: {} when m is empty.
func WriteList(w io.Writer, m map[string]string) error {
	if m == nil {
		m = map[string]string{}
	}
	return json.NewEncoder(w).Encode(m)
}

// Host returns the registry host (with port, lowercased) of a server URL as
// docker passes it: "registry.example.com", "registry.example.com:5050",
// "https://registry.example.com/v2/".
func Host(serverURL string) (string, error) {
	s := strings.TrimSpace(serverURL)
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("server URL %q: %w", oneLine(serverURL), err)
	}
	if u.Host == "" || u.User != nil || strings.ContainsAny(u.Host, " \t") {
		return "", fmt.Errorf("server URL %q has no usable host", oneLine(serverURL))
	}
	return strings.ToLower(u.Host), nil
}

// oneLine keeps a message on one line and of sane length.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	return s
}
