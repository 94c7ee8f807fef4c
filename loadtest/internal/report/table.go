package report

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the report for a person: the figures per scenario, the
// latency distributions, the checks, and the verdict.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "scenario\tunit\tdirect\tgw-direct\ttunnel\tratio\trelay\trelay-ratio\tresult\t\n")
	for _, s := range r.Scenarios {
		result := "ok"
		if !s.Passed {
			result = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Name, s.Unit, optNum(s.Direct), optNum(s.GatewayDirect),
			Num(s.Tunnel), optNum(s.Ratio), optNum(s.Relay), optNum(s.RelayRatio), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var lat []*Scenario
	for _, s := range r.Scenarios {
		if len(s.Latency) > 0 {
			lat = append(lat, s)
		}
	}
	if len(lat) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "latency (ms)\tpath\trequests\tp50\tp90\tp99\tp99.9\tp99.99\tmax\terrors\t\n")
		for _, s := range lat {
			for _, p := range Paths {
				l := s.Latency[p]
				if l == nil {
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", s.Name, p, l.Count,
					Num(l.P50), Num(l.P90), Num(l.P99), Num(l.P999), Num(l.P9999), Num(l.Max), l.Errors)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "check\tkind\trule\tmeasured\tresult\n")
	for _, s := range r.Scenarios {
		for _, c := range s.Checks {
			res := "ok"
			switch {
			case !c.Pass && c.Kind == KindFloor:
				res = "FAIL"
			case !c.Pass:
				res = "missed"
			}
			measured := Num(c.Value)
			if !c.Measured {
				measured = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s %s %s\t%s\t%s\n", s.Name, c.Kind, c.Metric, c.Op, trimFloat(c.Limit), measured, res)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var fails []string
	fails = append(fails, r.Failures...)
	for _, s := range r.Scenarios {
		for _, n := range s.Notes {
			fails = append(fails, s.Name+": note: "+n)
		}
		for _, f := range s.Failures {
			fails = append(fails, s.Name+": "+f)
		}
		for _, e := range s.ErrorSamples {
			fails = append(fails, s.Name+": error sample: "+e)
		}
	}
	fmt.Fprintln(w)
	for _, f := range fails {
		fmt.Fprintln(w, "  "+f)
	}
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs (%s), a system call %.0f ns, a round trip to another process %.0f us\n",
		m.CPUs, m.CPUModel, m.SyscallNs, m.ProcessRoundTripUs)
	verdict := "PASSED"
	if !r.Passed {
		verdict = "FAILED"
	}
	la := r.Machine.LoadAverage
	_, err := fmt.Fprintf(w, "%s: profile %s, %d scenarios, %.0f s, commit %s, %d CPUs, load average %.2f at the start, %.2f at the end\n",
		verdict, r.Profile, len(r.Scenarios), r.Seconds, r.Commit, r.Machine.CPUs, la.Start[0], la.End[0])
	return err
}

func optNum(p *float64) string {
	if p == nil {
		return "-"
	}
	return Num(*p)
}

// Num formats a figure with about four significant digits.
func Num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 1000:
		return groupThousands(strconv.FormatFloat(v, 'f', 0, 64))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var parts []string
	for len(s) > 3 {
		parts = append(parts, s[len(s)-3:])
		s = s[:len(s)-3]
	}
	parts = append(parts, s)
	slices.Reverse(parts)
	out := strings.Join(parts, ",")
	if neg {
		out = "-" + out
	}
	return out
}

// trimFloat prints a limit without trailing zeros: 0.35, 5000, 16.
func trimFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
