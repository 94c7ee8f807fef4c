package routetable

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

var bodySizeCases = []struct {
	in   string
	want int64
	ok   bool
}{
	{"0", 0, true},
	{"1", 1, true},
	{"1048576", 1 << 20, true},
	{"8k", 8 << 10, true},
	{"8K", 8 << 10, true},
	{"8Ki", 8 << 10, true},
	{"8m", 8 << 20, true},
	{"8M", 8 << 20, true},
	{"100Mi", 100 << 20, true},
	{"1g", 1 << 30, true},
	{"1G", 1 << 30, true},
	{"1Gi", 1 << 30, true},
	{"1gI", 1 << 30, true},
	{"0m", 0, true},
	{"007k", 7 << 10, true},
	{" 16m ", 16 << 20, true},
	{"9223372036854775807", 1<<63 - 1, true},
	{"8589934591g", 8589934591 << 30, true}, // the largest count of GiB in an int64

	{"", 0, false},
	{" ", 0, false},
	{"m", 0, false},
	{"-1", 0, false},
	{"+1", 0, false},
	{"1.5m", 0, false},
	{"1 m", 0, false},
	{"8mb", 0, false},
	{"8MB", 0, false},
	{"8t", 0, false},
	{"8Ti", 0, false},
	{"8iM", 0, false},
	{"0x10", 0, false},
	{"1e6", 0, false},
	{"lots", 0, false},
	{"9223372036854775808", 0, false},
	{"8589934592g", 0, false},
	{"99999999999999999999999k", 0, false},
	{"١٢", 0, false},      // digits, but not ASCII ones
	{"8\u212a", 0, false}, // the Kelvin sign, which strings.ToLower makes a k
}

func TestParseBodySize(t *testing.T) {
	for _, c := range bodySizeCases {
		got, err := ParseBodySize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseBodySize(%q) = %d, %v; want %d, ok=%v", c.in, got, err, c.want, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), strconv.Quote(c.in)) {
			t.Errorf("ParseBodySize(%q): error %q does not quote the value", c.in, err)
		}
	}
}

func FuzzParseBodySize(f *testing.F) {
	for _, c := range bodySizeCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBodySize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("ParseBodySize(%q) = %d with error %v", s, n, err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseBodySize(%q) = %d", s, n)
		}
		// Units are case-insensitive, and the byte count is itself a
		// valid size.
		if m, err := ParseBodySize(strings.ToUpper(s)); err != nil || m != n {
			t.Fatalf("ParseBodySize(%q) = %d, but upper case gives %d, %v", s, n, m, err)
		}
		if m, err := ParseBodySize(strconv.FormatInt(n, 10)); err != nil || m != n {
			t.Fatalf("ParseBodySize(%q) = %d, which does not round-trip: %d, %v", s, n, m, err)
		}
	})
}

func TestTableBodyLimit(t *testing.T) {
	annotated := func(host string, annotations map[string]string) controlplane.Route {
		r := rt(clusterA, host, "/", "Prefix", host)
		r.Annotations = annotations
		return r
	}
	long := strings.Repeat("9", 200)
	tests := []struct {
		name        string
		annotations map[string]string
		want        int64
		problem     string // the annotation reported as not parsing
	}{
		{"none", nil, 0, ""},
		{"pipeops", map[string]string{AnnotationMaxBodySize: "8m"}, 8 << 20, ""},
		{"nginx", map[string]string{AnnotationNginxBodySize: "1g"}, 1 << 30, ""},
		{"pipeops wins over nginx", map[string]string{AnnotationMaxBodySize: "2k", AnnotationNginxBodySize: "1m"}, 2 << 10, ""},
		{"empty pipeops defers to nginx", map[string]string{AnnotationMaxBodySize: " ", AnnotationNginxBodySize: "1m"}, 1 << 20, ""},
		{"zero is no limit of its own", map[string]string{AnnotationNginxBodySize: "0"}, 0, ""},
		{"malformed", map[string]string{AnnotationMaxBodySize: "lots"}, 0, AnnotationMaxBodySize},
		{"malformed pipeops is not replaced by nginx", map[string]string{AnnotationMaxBodySize: "-1", AnnotationNginxBodySize: "1m"}, 0, AnnotationMaxBodySize},
		{"malformed nginx", map[string]string{AnnotationNginxBodySize: "1.5m"}, 0, AnnotationNginxBodySize},
		{"overlong", map[string]string{AnnotationNginxBodySize: long}, 0, AnnotationNginxBodySize},
		{"unrelated annotations", map[string]string{"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewTable([]controlplane.Route{annotated("app.test", tc.annotations)}, nil)
			m, ok := tab.Lookup("app.test", "/x")
			if !ok || m.MaxRequestBody != tc.want {
				t.Fatalf("MaxRequestBody = %d (found %v), want %d", m.MaxRequestBody, ok, tc.want)
			}
			switch {
			case tc.problem == "" && len(tab.bodySizeProblems) != 0:
				t.Fatalf("problems %+v, want none", tab.bodySizeProblems)
			case tc.problem != "" && (len(tab.bodySizeProblems) != 1 || tab.bodySizeProblems[0].annotation != tc.problem):
				t.Fatalf("problems %+v, want one for %s", tab.bodySizeProblems, tc.problem)
			case tc.problem != "" && len(tab.bodySizeProblems[0].value) > maxBodySizeAnnotationLen+3:
				t.Fatalf("problem value not shortened: %d bytes", len(tab.bodySizeProblems[0].value))
			}
		})
	}
}

// TestBodySizeProblemsLoggedOnce checks that a malformed annotation is
// logged once, not on every reload, and again when its value changes.
func TestBodySizeProblemsLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	s := NewStore(nil, Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	table := func(value string) *Table {
		r := rt(clusterA, "app.test", "/", "Prefix", "app")
		r.Annotations = map[string]string{AnnotationNginxBodySize: value}
		return NewTable([]controlplane.Route{r, rt(clusterA, "other.test", "/", "Prefix", "other")}, nil)
	}
	lines := func() int { return strings.Count(buf.String(), "body size annotation") }
	for range 3 {
		s.logBodySizeProblems(table("lots"))
	}
	if n := lines(); n != 1 {
		t.Fatalf("%d log lines after three reloads, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "host=app.test") || !strings.Contains(buf.String(), `value=lots`) {
		t.Fatalf("log line lacks the route or value:\n%s", buf.String())
	}
	s.logBodySizeProblems(table("more"))
	s.logBodySizeProblems(table("8m")) // fixed: forgotten
	s.logBodySizeProblems(table("lots"))
	if n := lines(); n != 3 {
		t.Fatalf("%d log lines, want 3 (lots, more, lots again after a fix):\n%s", n, buf.String())
	}
}
