package storage

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A server that accepts and then sends nothing: a request fails after the
// idle timeout with a *StalledError, not never.
func TestIdleTimeoutStalledConnection(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go io.Copy(io.Discard, c)
		}
	}()
	client := &http.Client{Transport: idleTransport()}
	start := time.Now()
	_, err = client.Get("http://" + ln.Addr().String() + "/")
	took := time.Since(start)
	var st *StalledError
	if !errors.As(err, &st) || took > 3*time.Second {
		t.Fatalf("after %v: %v; want a *StalledError", took, err)
	}
	if !strings.Contains(err.Error(), "no data for 300ms: the connection stalled") {
		t.Fatalf("message: %v", err)
	}
	r := &Repo{name: "s3://b"}
	if msg := r.wrap("k", err).Error(); msg != "storage: repository s3://b: k: no data for 300ms: the connection stalled" {
		t.Fatalf("wrapped: %s", msg)
	}
	if retryable(t.Context(), err) {
		t.Fatal("a stall must not be retried by the reader")
	}
}

// A slow answer that keeps moving bytes, slower than the idle timeout in
// all but faster between bytes, is not a stall.
func TestIdleTimeoutProgressKeepsTheConnection(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 300 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for range 10 {
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer srv.Close()
	client := &http.Client{Transport: idleTransport()}
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != 10 {
		t.Fatalf("%q, %v", b, err)
	}
	// An idle pooled connection that times out is dropped, not reused
	// broken: a later request works.
	time.Sleep(500 * time.Millisecond)
	resp, err = client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
