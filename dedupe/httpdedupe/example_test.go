package httpdedupe_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

// PUT /payment made idempotent: a retry gets the stored response, a reused
// key with a different body gets 409, a missing key 400.
func ExampleNew() {
	guard := &dedupe.Guard{
		Store:       memstore.New(memstore.Config{}),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Namespace:   "api",
	}
	transfers := 0
	pay := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		transfers++ // the non-idempotent effect
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"payment_id":"p-1","transfer":%d}`, transfers)
	})
	mux := http.NewServeMux()
	mux.Handle("PUT /payment", httpdedupe.New(guard, httpdedupe.Config{})(pay))

	send := func(key, body string) {
		r := httptest.NewRequest("PUT", "/payment", strings.NewReader(body))
		if key != "" {
			r.Header.Set("Idempotency-Key", key)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		b, _ := io.ReadAll(w.Result().Body)
		fmt.Printf("%d replayed=%q %s\n", w.Code, w.Header().Get("Idempotent-Replayed"), strings.TrimSpace(string(b)))
	}
	send("k-1", `{"amount":100,"timestamp":1728468810}`)
	send("k-1", `{"amount":100,"timestamp":1728468875}`) // the client's retry
	send("k-1", `{"amount":900,"timestamp":1728468875}`) // key reused
	send("", `{"amount":100}`)
	fmt.Println("transfers:", transfers)
	// Output:
	// 202 replayed="" {"payment_id":"p-1","transfer":1}
	// 202 replayed="true" {"payment_id":"p-1","transfer":1}
	// 409 replayed="" {"type":"about:blank","title":"Idempotency key reused","status":409,"detail":"This idempotency key was already used for a different request."}
	// 400 replayed="" {"type":"about:blank","title":"Idempotency key required","status":400,"detail":"PUT /payment requires the Idempotency-Key header."}
	// transfers: 1
}
