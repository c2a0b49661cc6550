package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gltoken.dev/gltoken/internal/gitlabfake"
)

// lfsGit is w.git with Git LFS's filters installed in the fresh HOME, as
// `git lfs install` does on a runner.
func (w *world) lfsGit(t *testing.T, d *daemon, idToken string, extraEnv ...string) *gitEnv {
	t.Helper()
	needTool(t, "git-lfs", "git-lfs")
	g := w.git(t, d, idToken, extraEnv...)
	g.mustRun("", "lfs", "install", "--skip-repo")
	return g
}

// TestLFSThroughTheHelper: CI jobs push and clone a Git LFS object with the
// real git-lfs, every credential from the helper. The push job's
// write_repository credential (a developer's project access token) uploads
// through GitLab's batch API; a read job's deploy token downloads it and
// cannot upload.
func TestLFSThroughTheHelper(t *testing.T) {
	w := newWorld(t)
	d := w.startDaemon(t, daemonOpts{})
	content := strings.Repeat("binary asset \x00\x01\x02\n", 4096)
	sum := sha256.Sum256([]byte(content))
	oid := hex.EncodeToString(sum[:])

	// The push job (rule app-pushes-deploy: developer, write_repository).
	push := w.lfsGit(t, d, w.job("main", true), "GLTOKEN_SCOPE=read_repository write_repository")
	push.mustRun("", "clone", w.gl.URL()+"/platform/deploy.git")
	dep := filepath.Join(push.workDir, "deploy")
	push.mustRun(dep, "lfs", "track", "*.bin")
	writeFile(t, filepath.Join(dep, "asset.bin"), content, 0o644)
	push.mustRun(dep, "add", ".gitattributes", "asset.bin")
	push.mustRun(dep, "commit", "-q", "-m", "an LFS asset")
	out := push.mustRun(dep, "push", "origin", "HEAD:refs/heads/assets")
	assertNoSecrets(t, "push output", out)
	if got := w.gl.LFSObjects("platform/deploy"); got[oid] != int64(len(content)) {
		t.Fatalf("LFS objects of platform/deploy after the push: %v\n%s", got, out)
	}
	// git holds the pointer, not the content.
	blob := push.mustRun(dep, "show", "HEAD:asset.bin")
	if !strings.HasPrefix(blob, "version https://git-lfs.github.com/spec/v1\noid sha256:"+oid+"\n") {
		t.Fatalf("the committed blob is not an LFS pointer:\n%.200s", blob)
	}

	// A read job (read_repository only: a deploy token) clones with LFS.
	read := w.lfsGit(t, d, w.job("main", true))
	read.mustRun("", "clone", "-q", "--branch", "assets", w.gl.URL()+"/platform/deploy.git", "ro")
	ro := filepath.Join(read.workDir, "ro")
	got, err := os.ReadFile(filepath.Join(ro, "asset.bin"))
	if err != nil || string(got) != content {
		t.Fatalf("the clone's asset.bin is not the LFS object (%d bytes, %v)", len(got), err)
	}
	var deployTok bool
	for _, tok := range w.liveMinted() {
		deployTok = deployTok || (tok.OwnerPath == "platform/deploy" && tok.Kind == gitlabfake.KindDeployProject)
	}
	if !deployTok {
		t.Fatalf("the read job got no deploy token on platform/deploy: %+v", w.liveMinted())
	}
	// The deploy token cannot upload: GitLab's batch answers 403.
	writeFile(t, filepath.Join(ro, "other.bin"), content+"more\n", 0o644)
	read.mustRun(ro, "add", "other.bin")
	read.mustRun(ro, "commit", "-q", "-m", "another asset")
	out, err = read.run(ro, "lfs", "push", "origin", "assets")
	if err == nil {
		t.Fatalf("a read-only credential uploaded an LFS object:\n%s", out)
	}
	if !strings.Contains(out, "403") && !strings.Contains(strings.ToLower(out), "forbidden") {
		t.Fatalf("the refused upload does not say forbidden:\n%s", out)
	}
	assertNoSecrets(t, "refused upload output", out)
	assertNoSecrets(t, "daemon log", d.logs.String())
}
