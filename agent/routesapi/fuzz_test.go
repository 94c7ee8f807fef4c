package routesapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeError: any answer of the control plane that is not a 200
// becomes an APIError with its status, the code and message of the error
// shape when the body is that shape, and otherwise at most the start of the
// body, cut at a character boundary. 401 and 403, and only they, match
// ErrUnauthorized; 404, and only it, is IsNotFound.
func FuzzDecodeError(f *testing.F) {
	// TestErrors's answers, and bodies of other shapes.
	for _, c := range []struct {
		status int
		body   string
	}{
		{401, `{"error":{"code":"unauthorized","message":"bad token"}}`},
		{403, `{"error":{"code":"forbidden","message":"other cluster"}}`},
		{404, `{"error":{"code":"not_found","message":"no such hostname"}}`},
		{409, `{"error":{"code":"conflict","message":"hostname a.example.com belongs to another cluster"}}`},
		{500, `{"error":{"code":"internal","message":"internal error"}}`},
		{502, `<html>bad gateway</html>`},
		{201, `{}`},
		{500, `{"error":{"code":"","message":""}}`},
		{500, `{"error":"flat"}`},
		{503, "  \n"},
		{502, strings.Repeat("x", maxErrorMessage-1) + "é and more"},
		{502, strings.Repeat("€", maxErrorMessage)},
	} {
		f.Add(c.status, []byte(c.body))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return // not a status an HTTP client hands over
		}
		ae := decodeError(&http.Response{StatusCode: status, Body: io.NopCloser(strings.NewReader(string(body)))})
		if ae.Status != status {
			t.Fatalf("status %d decoded as %d", status, ae.Status)
		}
		if msg := ae.Error(); !strings.Contains(msg, strconv.Itoa(status)) {
			t.Fatalf("error %q does not give the status %d", msg, status)
		}
		if got, want := errors.Is(ae, ErrUnauthorized), status == 401 || status == 403; got != want {
			t.Fatalf("status %d: errors.Is(ErrUnauthorized) = %v", status, got)
		}
		if got, want := IsNotFound(ae), status == 404; got != want {
			t.Fatalf("status %d: IsNotFound = %v", status, got)
		}

		var shape struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		read := body[:min(len(body), maxErrorBody)] // all a misbehaving server gets read
		if json.Unmarshal(read, &shape) == nil && (shape.Error.Code != "" || shape.Error.Message != "") {
			if ae.Code != shape.Error.Code || ae.Message != shape.Error.Message {
				t.Fatalf("error body %q decoded as code %q message %q", body, ae.Code, ae.Message)
			}
			return
		}
		if ae.Code != "" {
			t.Fatalf("code %q from a body not of the error shape: %q", ae.Code, body)
		}
		text := strings.TrimSpace(string(read))
		kept, cut := strings.CutSuffix(ae.Message, "...")
		switch {
		case !cut && ae.Message != text && len(text) <= maxErrorMessage:
			t.Fatalf("message %q, want the whole body %q", ae.Message, text)
		case !cut && len(text) > maxErrorMessage, cut && len(text) <= maxErrorMessage && ae.Message != text:
			t.Fatalf("message %q for a body of %d bytes", ae.Message, len(text))
		case cut && len(text) > maxErrorMessage && (!strings.HasPrefix(text, kept) || len(kept) > maxErrorMessage || len(kept) < maxErrorMessage-utf8.UTFMax+1):
			t.Fatalf("message %q is not the start of the body %q", ae.Message, text)
		}
		if utf8.ValidString(text) && !utf8.ValidString(ae.Message) {
			t.Fatalf("message %q of a UTF-8 body is not UTF-8", ae.Message)
		}
	})
}
