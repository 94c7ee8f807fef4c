package postgres

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	if err := db.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if db.Now == nil || db.RouteTTL != DefaultRouteTTL {
		t.Errorf("defaults: Now set %v, RouteTTL %v; want set and %v", db.Now != nil, db.RouteTTL, DefaultRouteTTL)
	}
}

// The message must say what is wrong with DATABASE_URL, and must not leak
// its password into logs.
func TestOpenErrors(t *testing.T) {
	const secret = "s3cr3t-pa55"
	// A port nothing listens on: taken, then freed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	tests := []struct {
		name string
		url  string
		want string // in the message
	}{
		{"empty", "", "DATABASE_URL is empty"},
		{"other scheme", "mysql://app:" + secret + "@db:3306/app", "not a postgres:// URL"},
		{"bad port", "postgres://app:" + secret + "@db:port/app", "not a valid URL"},
		{"bad option", "postgres://app:" + secret + "@db:5432/app?sslmode=sometimes", "sslmode"},
		{"bad key=value", "host=db password=" + secret + " port=abc", "DATABASE_URL"},
		{"unreachable", "postgres://app:" + secret + "@127.0.0.1:" + closedPort + "/app?connect_timeout=5", "cannot reach PostgreSQL at host=127.0.0.1 port=" + closedPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			db, err := Open(ctx, tt.url)
			if err == nil {
				db.Close()
				t.Fatal("Open succeeded")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			if !strings.Contains(msg, "DATABASE_URL") {
				t.Errorf("error %q does not name DATABASE_URL", msg)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error %q contains the password", msg)
			}
		})
	}
}

// A pool handed to New belongs to the caller: Close must leave it open.
func TestCloseLeavesCallersPool(t *testing.T) {
	pool := pgtest.Pool(t)
	New(pool).Close()
	if err := pool.Ping(context.Background()); err != nil {
		t.Fatalf("pool closed by DB.Close: %v", err)
	}
}
