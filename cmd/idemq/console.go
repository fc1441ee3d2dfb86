package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/outbox"
)

// webFS holds the console's templates, style sheet and script: the console
// needs no build step and fetches nothing at run time.
//
//go:embed web
var webFS embed.FS

// Console defaults.
const (
	defaultConsoleAddr = "127.0.0.1:8089"
	defaultPageSize    = 50
	maxPageSize        = 500
)

// Environment variables the console reads when the matching flag is empty,
// so that secrets need not appear in the process list.
const (
	envConsoleToken     = "IDEMQ_CONSOLE_TOKEN"
	envConsoleBasicAuth = "IDEMQ_CONSOLE_BASIC_AUTH"
)

// Cookie names.
const (
	csrfCookie  = "idemq_csrf"
	tokenCookie = "idemq_token"
)

// errExposed is returned when the console would listen on a non-loopback
// address without authentication.
var errExposed = errors.New("refusing to listen on a non-loopback address without -token or -basic-auth")

// consoleConfig says what the console serves and how.
type consoleConfig struct {
	// Streams are the dead-letter streams shown; only they can be read or
	// changed through the console.
	Streams []string
	// ShowBodies shows message bodies on the detail page; without it they
	// are hidden (payloads can be sensitive).
	ShowBodies bool
	// Token, when set, is required as a bearer token, a cookie set by the
	// login form, or ?token= once.
	Token string
	// BasicUser and BasicPassword, when set, are accepted as HTTP basic
	// authentication; the user name is logged as who did an action.
	BasicUser, BasicPassword string
	// Rate is the replay pace offered by default, in messages per second.
	Rate float64
	// PageSize is how many dead letters a list page shows by default.
	PageSize int
	// Logger receives one record per action (who, what, result).
	Logger *slog.Logger
	// Now is the clock for ages.
	Now func() time.Time
}

// console is the web console's state; its handler serves every page.
type console struct {
	cfg     consoleConfig
	js      jetstream.JetStream
	db      *sql.DB
	ob      *outbox.Outbox
	pages   map[string]*template.Template
	csrfKey []byte
	jobs    *jobRunner
	static  http.Handler
}

// newConsole returns a console on js and, when db is not nil, on the outbox
// ob in db. Close it to stop its running jobs.
func newConsole(cfg consoleConfig, js jetstream.JetStream, db *sql.DB, ob *outbox.Outbox) (*console, error) {
	if len(cfg.Streams) == 0 {
		return nil, errors.New("console: no dead-letter stream")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = defaultPageSize
	}
	if cfg.Rate < 0 || math.IsNaN(cfg.Rate) {
		return nil, errors.New("console: negative rate")
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(webFS, "web/static")
	if err != nil {
		return nil, err
	}
	return &console{
		cfg: cfg, js: js, db: db, ob: ob, pages: pages, csrfKey: key,
		jobs:   newJobRunner(cfg.Logger),
		static: http.StripPrefix("/static/", http.FileServerFS(static)),
	}, nil
}

// Close cancels the running jobs and waits for them to stop.
func (c *console) Close() { c.jobs.close() }

// Handler returns the console's HTTP handler: the pages and actions behind
// authentication, host checking and CSRF protection.
func (c *console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /dlq/{stream}", c.list)
	mux.HandleFunc("GET /dlq/{stream}/msg/{seq}", c.letter)
	mux.HandleFunc("POST /dlq/{stream}/replay", c.replay)
	mux.HandleFunc("POST /dlq/{stream}/purge", c.purge)
	mux.HandleFunc("GET /jobs/{id}", c.job)
	mux.HandleFunc("GET /jobs/{id}/status", c.jobStatus)
	mux.HandleFunc("POST /jobs/{id}/cancel", c.cancelJob)
	mux.HandleFunc("GET /outbox", c.outboxPage)
	mux.HandleFunc("POST /outbox/retry", c.outboxRetry)
	mux.HandleFunc("POST /login", c.login)
	mux.Handle("GET /static/", c.static)

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, http.StatusForbidden, errors.New("cross-origin request refused"))
	}))
	return c.secure(cop.Handler(c.csrf(mux)))
}

// whoKey keys the authenticated identity in a request's context.
type whoKey struct{}

// csrfKeyCtx keys the request's CSRF token in its context.
type csrfKeyCtx struct{}

// who returns who made r, for the action log.
func who(r *http.Request) string {
	s, _ := r.Context().Value(whoKey{}).(string)
	return s
}

// secure sets the security headers, refuses foreign Host headers when no
// authentication is configured (a DNS-rebinding guard for the loopback
// default) and authenticates the request.
func (c *console) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if !c.authConfigured() && !loopbackHost(r.Host) {
			c.fail(w, r, http.StatusForbidden, fmt.Errorf("host %q is not a loopback name; the console has no authentication configured", r.Host))
			return
		}
		if strings.HasPrefix(r.URL.Path, "/static/") {
			next.ServeHTTP(w, r) // the style sheet and script are no secret
			return
		}
		id, ok := c.authenticate(w, r)
		if !ok {
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), whoKey{}, id+"@"+r.RemoteAddr)))
	})
}

func (c *console) authConfigured() bool { return c.cfg.Token != "" || c.cfg.BasicUser != "" }

// authenticate checks the request's credentials and returns who it is. On
// failure it has answered the request.
func (c *console) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !c.authConfigured() {
		return "local", true
	}
	if c.cfg.BasicUser != "" {
		if u, p, ok := r.BasicAuth(); ok && equal(u, c.cfg.BasicUser) && equal(p, c.cfg.BasicPassword) {
			return u, true
		}
	}
	if c.cfg.Token != "" {
		if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && equal(t, c.cfg.Token) {
			return "token", true
		}
		if ck, err := r.Cookie(tokenCookie); err == nil && equal(ck.Value, c.tokenCookieValue()) {
			return "token", true
		}
		if r.Method == http.MethodGet && r.URL.Query().Has("token") && equal(r.URL.Query().Get("token"), c.cfg.Token) {
			c.setTokenCookie(w)
			q := r.URL.Query()
			q.Del("token")
			u := *r.URL
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
			return "", false
		}
		if r.Method == http.MethodPost && r.URL.Path == "/login" {
			return "login", true // checked by the login handler
		}
	}
	if c.cfg.BasicUser != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="idemq console", charset="UTF-8"`)
	}
	w.WriteHeader(http.StatusUnauthorized)
	c.render(w, r, "login.html", map[string]any{"Title": "Log in", "TokenLogin": c.cfg.Token != ""})
	return "", false
}

// tokenCookieValue is what the token cookie holds: a MAC of the token, so
// the cookie never carries the token itself.
func (c *console) tokenCookieValue() string { return c.mac("token:" + c.cfg.Token) }

func (c *console) setTokenCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: c.tokenCookieValue(), Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode})
}

// login takes the token from the login form.
func (c *console) login(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Token == "" || !equal(r.PostFormValue("token"), c.cfg.Token) {
		c.cfg.Logger.Warn("console login refused", "remote", r.RemoteAddr)
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, r, "login.html", map[string]any{"Title": "Log in", "TokenLogin": c.cfg.Token != "", "Failed": true})
		return
	}
	c.cfg.Logger.Info("console login", "remote", r.RemoteAddr)
	c.setTokenCookie(w)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// mac returns the hex HMAC-SHA256 of s under the console's key.
func (c *console) mac(s string) string {
	m := hmac.New(sha256.New, c.csrfKey)
	m.Write([]byte(s))
	return hex.EncodeToString(m.Sum(nil))
}

// csrf gives every browser a random CSRF cookie and requires each POST
// (but the login form, which has no session yet) to carry the form field
// csrf holding the MAC of that cookie. Cross-origin POSTs are already
// refused by http.CrossOriginProtection; this covers browsers that send
// neither Sec-Fetch-Site nor Origin.
func (c *console) csrf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var session string
		if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) == 64 {
			session = ck.Value
		}
		if r.Method == http.MethodPost && r.URL.Path != "/login" {
			if session == "" || !equal(r.PostFormValue("csrf"), c.mac("csrf:"+session)) {
				c.cfg.Logger.Warn("console action refused: bad CSRF token", "who", who(r), "path", r.URL.Path)
				c.fail(w, r, http.StatusForbidden, errors.New("missing or wrong CSRF token: reload the page and try again"))
				return
			}
		}
		if session == "" {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			session = hex.EncodeToString(b)
			http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: session, Path: "/", HttpOnly: true,
				SameSite: http.SameSiteStrictMode})
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), csrfKeyCtx{}, c.mac("csrf:"+session))))
	})
}

// loopbackHost reports whether a Host header names the loopback interface.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkExposure returns errExposed when addr is not a loopback address and
// no authentication is configured. An empty host (":8089") listens on
// every interface; a host name other than localhost counts as exposed.
func checkExposure(addr string, authenticated bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	if authenticated || (host != "" && loopbackHost(host)) {
		return nil
	}
	return fmt.Errorf("%w: -addr %s", errExposed, addr)
}

// consoleUsage is the console's synopsis.
const consoleUsage = "-nats URL [-stream DLQ ...] [-db URL] [-addr 127.0.0.1:8089] [-token T | -basic-auth USER:PASS] [-show-bodies]"

func (a *app) console(ctx context.Context, args []string) error {
	fs := a.flagSet("console", consoleUsage,
		"Serves a web console: an overview of the dead-letter streams and the outbox, dead letters\n"+
			"filtered and paged, their details, and the CLI's replay, purge and outbox retry as buttons.\n"+
			"It listens on loopback by default and refuses any other address without -token or\n"+
			"-basic-auth. Every action is logged on stderr with who did it.")
	natsURL := fs.String("nats", defaultNATSURL, "NATS server `URL`")
	streams := stringList{}
	fs.Var(&streams, "stream", "dead-letter `stream` to show (repeatable, or comma-separated; default DLQ)")
	dbURL := fs.String("db", "", "outbox database `URL`: postgres://… or sqlite:PATH (optional)")
	table := fs.String("table", outbox.DefaultTable, "outbox `table` name")
	addr := fs.String("addr", defaultConsoleAddr, "listen `address`")
	token := fs.String("token", "", "require this bearer `token` (default $"+envConsoleToken+")")
	basic := fs.String("basic-auth", "", "require HTTP basic auth `USER:PASS` (default $"+envConsoleBasicAuth+")")
	showBodies := fs.Bool("show-bodies", false, "show message bodies (hidden by default: payloads can be sensitive)")
	perSecond := fs.Float64("rate", defaultRate, "default replay pace in messages per `N` second; 0 means unlimited")
	pageSize := fs.Int("page-size", defaultPageSize, "dead letters per list `page`")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	if len(streams) == 0 {
		streams = stringList{defaultDLQStream}
	}
	if *token == "" {
		*token = os.Getenv(envConsoleToken)
	}
	if *basic == "" {
		*basic = os.Getenv(envConsoleBasicAuth)
	}
	cfg := consoleConfig{Streams: streams, ShowBodies: *showBodies, Token: *token, Rate: *perSecond, PageSize: *pageSize,
		Logger: slog.New(slog.NewTextHandler(a.stderr, nil)), Now: a.now}
	if *basic != "" {
		u, p, ok := strings.Cut(*basic, ":")
		if !ok || u == "" || p == "" {
			return usageErrorf(fs, "-basic-auth must be USER:PASS")
		}
		cfg.BasicUser, cfg.BasicPassword = u, p
	}
	switch {
	case *perSecond < 0 || math.IsNaN(*perSecond):
		return usageErrorf(fs, "-rate must not be negative")
	case *pageSize <= 0 || *pageSize > maxPageSize:
		return usageErrorf(fs, "-page-size must be between 1 and %d", maxPageSize)
	case *dbURL != "" && !validDBURL(*dbURL):
		return usageErrorf(fs, "%v: got %q", errBadDBURL, *dbURL)
	}
	if err := checkExposure(*addr, cfg.Token != "" || cfg.BasicUser != ""); err != nil {
		return usageErrorf(fs, "%v", err)
	}
	nc, js, err := connectNATS(*natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	var db *sql.DB
	var ob *outbox.Outbox
	if *dbURL != "" {
		if db, ob, err = openOutbox(ctx, *dbURL, *table); err != nil {
			return err
		}
		defer db.Close()
	}
	c, err := newConsole(cfg, js, db, ob)
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           c.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	u := url.URL{Scheme: "http", Host: ln.Addr().String(), Path: "/"}
	cfg.Logger.Info("console listening", "url", u.String(), "streams", strings.Join(streams, ","),
		"outbox", *dbURL != "", "show_bodies", *showBodies, "auth", c.authConfigured())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-done
	cfg.Logger.Info("console stopped")
	return nil
}
