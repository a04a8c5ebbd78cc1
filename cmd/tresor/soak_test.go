package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/soak"
	"github.com/tresorkms/tresor/internal/store/pgtest"
)

// TestSoakShort runs `tresor soak` for its shortest duration: two replica
// processes (this test binary serving, see TestMain) on a fresh PostgreSQL
// database and a SoftHSM2 token, with every fault of the schedule
// compressed into a minute (kill -9, SIGTERM, PostgreSQL connections
// terminated, the token taken away and back, a root-key rotation), and
// checks that the run passes every final check: the harness and its checks
// on the real dependencies.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts, kills and restarts server processes for a minute and a half")
	}
	pg := os.Getenv(pgtest.EnvURL)
	if pg == "" {
		pg = pgtest.DefaultURL
	}
	devDir := filepath.Dir(filepath.Dir(devCfg.TLS.CertFile))
	var progress lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	sum, err := soak.Run(ctx, soak.Options{
		Duration:    soak.MinDuration,
		Clients:     4,
		Seed:        1,
		Rate:        150,
		PostgresURL: pg,
		WorkDir:     t.TempDir(),
		// This process already uses the dev token's SoftHSM2
		// configuration (one per process): the soak's token goes there.
		SoftHSMDir:    filepath.Join(devDir, "softhsm"),
		Remember:      3000,
		TokenLifetime: 20 * time.Second, // minted again every ~13s: the refresh runs
		ServeCommand: func(path string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = []string{serveChildEnv + "=" + path}
			return cmd
		},
		VerifyAudit: verifySoakAudit,
		Log:         &progress,
	})
	if err != nil {
		t.Fatalf("soak.Run() err = %v, want nil\n%s", err, progress.String())
	}
	var text strings.Builder
	if err := sum.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("soak run took %v\n%s%s", time.Since(start).Round(time.Second), progress.String(), text.String())
	for _, c := range sum.Checks {
		t.Run(c.Name, func(t *testing.T) {
			if !c.Pass {
				t.Errorf("check %q failed: %s", c.Name, c.Detail)
			}
		})
	}
	if !sum.Passed || len(sum.Checks) < 10 {
		t.Errorf("soak.Run() = passed %v with %d checks, want passed with at least 10", sum.Passed, len(sum.Checks))
	}
	kinds := map[soak.FaultKind]int{}
	for _, f := range sum.Faults {
		kinds[f.Kind]++
	}
	want := map[soak.FaultKind]int{soak.FaultKill: 1, soak.FaultTerm: 1, soak.FaultDropPostgres: 2, soak.FaultRemoveToken: 2, soak.FaultRotateRootKey: 1}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("faults injected = %v, want %v", kinds, want)
	}
	// Every client and admin connection minted its first token; with 20s
	// tokens over a minute and more, each minted again.
	if sources := int64(4 + 2); sum.TokensMinted <= sources {
		t.Errorf("tokens minted = %d, want more than %d (refreshed before they expire)", sum.TokensMinted, sources)
	}
	// Each process start is a chain: a, a after the kill, b, b after SIGTERM.
	if sum.Audit == nil || sum.Audit.Chains < 4 || sum.Audit.Events < sum.Requests {
		t.Errorf("audit report = %+v, want at least 4 chains and an event per request (%d)", sum.Audit, sum.Requests)
	}
	if sum.Requests < 1000 {
		t.Errorf("requests = %d, want at least 1000 in a minute at 150/s", sum.Requests)
	}
}
