// Package deps pins the project's chosen libraries while the packages that use them are written.
package deps

import (
	_ "github.com/bmatcuk/doublestar/v4"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/jackc/pgx/v5"
	_ "github.com/lestrrat-go/jwx/v2/jwk"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/pflag"
	_ "gitlab.com/gitlab-org/api/client-go"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/sync/singleflight"
	_ "golang.org/x/time/rate"
	_ "modernc.org/sqlite"
)
