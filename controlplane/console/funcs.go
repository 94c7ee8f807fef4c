package console

import (
	"fmt"
	"html/template"
	"time"
)

// funcs are the templates' functions.
var funcs = template.FuncMap{
	"ago":      ago,
	"stamp":    stamp,
	"until":    until,
	"bytes":    humanBytes,
	"duration": func(d time.Duration) string { return d.Round(time.Millisecond).String() },
}

// ago says how long before now t was: "12s ago", "3m ago", "2h ago",
// "4d ago"; "never" for the zero time.
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return span(time.Since(t)) + " ago"
}

// until says how long after now t is, or "expired".
func until(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Until(t)
	if d <= 0 {
		return "expired"
	}
	return "in " + span(d)
}

func span(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// stamp is t for a datetime attribute and a tooltip, in UTC.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n), []string{"KiB", "MiB", "GiB", "TiB"}
	i := -1
	for v >= unit && i < len(suffix)-1 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", v, suffix[i])
}
