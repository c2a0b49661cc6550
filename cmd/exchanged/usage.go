package main

const usage = `NAME
    exchanged - trade GitLab CI/CD ID tokens for short-lived GitLab credentials

SYNOPSIS
    exchanged [serve] --config FILE
    exchanged check   --config FILE [--online]
    exchanged check   --project-policy FILE [--config FILE]
    exchanged explain --config FILE (--claims CLAIMS.json | --id-token FILE) --resource URL --scope SCOPE[,SCOPE]
    exchanged credentials revoke --config FILE --id LEDGER_ID | --job JOB_ID
    exchanged suggest --config FILE --since DURATION [--json]
    exchanged version

DESCRIPTION
    exchanged verifies a GitLab CI/CD ID token (a JWT GitLab signs for each job)
    against the instance's JWKS, checks the trust policy, and mints the
    least-privileged GitLab credential that covers the request: a project or
    group deploy token for reads and registry access, a project access token
    only for push or API access. Every credential is written to a durable
    ledger before it is minted and revoked when its time is up, also after a
    crash. Clients speak RFC 8693 token exchange on /v1/token and RFC 7009
    revocation on /v1/revoke, over a Unix socket or TCP with TLS.

COMMANDS
    serve     Run the daemon (the default). SIGTERM or SIGINT stop it
              gracefully; SIGHUP reloads the policy file, keeping the policy
              in force when the new one is invalid (the log says why), and
              fetches GitLab's JWKS again (keys GitLab dropped stop working),
              and re-reads the service token file (refused, keeping the token
              in force, unless its mode is 0600 or stricter).
    check     Validate the configuration and the policy, naming every
              problem with its file, line and rule. Exit 0 when valid.
              With --online it also asks GitLab about the service token
              (GET /personal_access_tokens/self): one GitLab rejects
              (invalid, expired, revoked) or without the api scope fails;
              otherwise it prints the token's scopes and days left.
              With --project-policy FILE it checks that policy file alone
              (for the CI of the repository holding it): no service token,
              no ledger; with --config too, under that configuration's
              gitlab.url and max_ttl. It also names the rules in mode shadow.
    explain   Print the policy's decision for the claims of an ID token (a
              JSON object, e.g. the decoded payload of a job's token), a
              resource URL and scopes: which rule matched, or for each rule
              the first check that failed. Offline: it mints nothing and
              needs neither GitLab nor the ledger.
    credentials revoke
              End credentials now: the one with that ledger id, or every live
              one job JOB_ID holds. Revoked at GitLab with its whole family
              (self-rotated successors) and recorded in the ledger, as the
              reaper does at the TTL, with an audit event (outcome
              operator_revoked) on stderr. Safe while the daemon runs on the
              same ledger. Exit 1 if one could not be revoked (the reaper
              retries it).
    suggest   Read what each rule of the policy minted and handed out in the
              last DURATION (the ledger's records created since then and the
              jobs that held them) and print, per rule, the source projects,
              targets, kinds, scopes, ttl and how long jobs held the
              credentials; then suggest least privilege: a rule that allows
              more than was used gets a narrower copy (project_path narrowed
              to the projects that used it, allow entries to the targets
              used, unused scopes dropped, ttl cut to the longest hold
              rounded up, never below 5m), named RULE-suggested, in mode
              shadow; a rule nothing used is flagged for removal. The output
              is a policy file (the report as comments): paste its rules next
              to the old ones, watch the audit log's shadow verdicts, then
              switch. --json prints the report as JSON. Read-only, safe while
              the daemon runs; never prints a secret or its fingerprint.
    version   Print the version.

OPTIONS
    --config FILE      The YAML configuration (see contrib/exchanged.yaml).
    --online           check: also ask GitLab about the service token.
    --claims FILE      explain: the ID token's claims as JSON ("-" for stdin).
    --id-token FILE    explain: a raw ID token (the JWT, "-" for stdin), decoded
                       WITHOUT verification (and labelled so) instead of --claims.
    --resource URL     explain: e.g. https://gitlab.example.com/platform/lib.git;
                       repeat it with registry repositories (https://REGISTRY/PROJECT)
                       to ask whether one credential serves them all, as a
                       registry login with GLTOKEN_REGISTRY_PROJECTS does.
    --scope SCOPES     explain: comma- or space-separated, e.g. read_repository
    --project-policy FILE
                       check: validate this policy file on its own.
    --since DURATION   suggest: the window, e.g. 168h (positive; required).
    --json             suggest: print the report as JSON.
    -h, --help         This text.

FILES
    /etc/gltoken/exchanged.yaml    configuration
    /etc/gltoken/policy.yaml       trust policy (policy_file)
    /etc/gltoken/gitlab-token      service account token as installed (mode 0600 root); the
                                   systemd unit hands it over with LoadCredential= as
                                   $CREDENTIALS_DIRECTORY/gitlab-token (gitlab.initial_token_file)
    /var/lib/gltoken/gitlab-token  the token in force (gitlab.token_file, mode 0600 or
                                   stricter; rotated in place, so its directory must be
                                   writable by the daemon unless gitlab.rotation.enabled is false)
    /run/gltoken/exchanged.sock    default Unix socket
    /var/lib/gltoken/state.db      default embedded ledger

EXIT STATUS
    0 success (explain: allowed); 1 invalid configuration, failure, or (explain)
    denied; 2 usage error.

EXAMPLES
    exchanged check --config /etc/gltoken/exchanged.yaml --online
    exchanged check --project-policy policy.yaml
    exchanged suggest --config /etc/gltoken/exchanged.yaml --since 168h > suggested.yaml
    exchanged explain --config /etc/gltoken/exchanged.yaml --claims job.json \
        --resource https://gitlab.example.com/platform/lib.git --scope read_repository
`
