// Package browsertest drives a real browser in tests: Debian's chromium,
// headless, through the DevTools protocol (chromedp), with a profile of its
// own in the test's temporary directory. A missing chromium is handled by
// the rule of package testenv: a skip, or a failure in CI. `make deps`
// installs it.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/pipeops/tunnel/shared/testenv"
)

// Names under which chromium is looked for in PATH (Debian's is the
// first); CHROMIUM, when set, is the path to use instead.
var names = []string{"chromium", "chromium-browser", "google-chrome"}

// Find returns the path of the browser, or an error wrapping
// testenv.ErrUnavailable.
func Find() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no chromium in PATH (apt-get install chromium, or `make deps`)", testenv.ErrUnavailable)
}

// Options shape the browser window.
type Options struct {
	// Width and Height of the window in CSS pixels (default 1280x800).
	Width, Height int
}

// Start starts a browser for t and returns a context for chromedp.Do and chromedp.Run on
// its first tab. The browser is closed when the test ends, and its
// profile removed with the test's temporary directory.
func Start(t testing.TB, opts Options) context.Context {
	t.Helper()
	path, err := Find()
	testenv.Require(t, "chromium", err)
	if opts.Width == 0 {
		opts.Width, opts.Height = 1280, 800
	}
	allocOpts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox, // root in CI; the pages are the test's own
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(opts.Width, opts.Height),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("no-proxy-server", true), // every page is on loopback
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), allocOpts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	// The first action starts the browser: fail here, with the reason,
	// rather than in the test's first step.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return ctx
}
