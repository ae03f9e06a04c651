// Command client posts records to a Fluentd forward-protocol server with
// fluent-logger-golang, the client library inside Docker's fluentd log driver.
//
// Build offline against Debian's golang-github-fluent-fluent-logger-golang-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o client ./client.go
//
// Record i (0-based) is posted with PostWithTime at start + i*step nanoseconds:
//
//	{"TENANT_ID": tenant, "SERVICE_ID": service, "log": "<prefix>-<i>", "i": i,
//	 "meta": {"seq": i, "tags": ["a", "b"], "ok": true}}
//
// It closes the logger (which, in async mode, sends everything still queued) and
// prints "sent <count>". Any error is printed and the exit status is 1.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	host := flag.String("host", "127.0.0.1", "server host")
	port := flag.Int("port", 24224, "server port")
	socket := flag.String("unix", "", "unix socket path (instead of host and port)")
	count := flag.Int("count", 10, "records to post")
	tag := flag.String("tag", "go.client", "tag")
	ack := flag.Bool("ack", false, "Config.RequestAck")
	subsec := flag.Bool("subsec", false, "Config.SubSecondPrecision")
	async := flag.Bool("async", false, "Config.Async")
	asJSON := flag.Bool("json", false, "Config.MarshalAsJSON")
	start := flag.Int64("start", 1700000000123456789, "time of record 0, in ns since the epoch")
	step := flag.Int64("step", 1000000001, "time between records, in ns")
	tenant := flag.String("tenant", "tgo", "TENANT_ID value")
	service := flag.String("service", "sgo", "SERVICE_ID value")
	prefix := flag.String("prefix", "go", "log line prefix")
	maxRetry := flag.Int("maxretry", 3, "Config.MaxRetry: attempts to connect, and to write each record")
	flag.Parse()

	cfg := fluent.Config{
		FluentHost:         *host,
		FluentPort:         *port,
		RequestAck:         *ack,
		SubSecondPrecision: *subsec,
		Async:              *async,
		MarshalAsJSON:      *asJSON,
		Timeout:            10 * time.Second,
		WriteTimeout:       30 * time.Second,
		MaxRetry:           *maxRetry,
	}
	if *socket != "" {
		cfg.FluentNetwork = "unix"
		cfg.FluentSocketPath = *socket
	}
	var asyncErrors int64
	if *async {
		// everything must fit in the queue: a full queue drops records
		cfg.BufferLimit = *count + 16
		cfg.AsyncResultCallback = func(data []byte, err error) {
			if err != nil {
				atomic.AddInt64(&asyncErrors, 1)
				fmt.Fprintf(os.Stderr, "async send failed: %v\n", err)
			}
		}
	}
	logger, err := fluent.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fluent.New: %v\n", err)
		os.Exit(1)
	}
	for i := 0; i < *count; i++ {
		record := map[string]interface{}{
			"TENANT_ID":  *tenant,
			"SERVICE_ID": *service,
			"log":        fmt.Sprintf("%s-%d", *prefix, i),
			"i":          i,
			"meta": map[string]interface{}{
				"seq":  i,
				"tags": []interface{}{"a", "b"},
				"ok":   true,
			},
		}
		t := time.Unix(0, *start+int64(i)**step)
		if err := logger.PostWithTime(*tag, t, record); err != nil {
			fmt.Fprintf(os.Stderr, "PostWithTime %d: %v\n", i, err)
			logger.Close()
			os.Exit(1)
		}
	}
	if err := logger.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "Close: %v\n", err)
		os.Exit(1)
	}
	if n := atomic.LoadInt64(&asyncErrors); n != 0 {
		fmt.Fprintf(os.Stderr, "%d async sends failed\n", n)
		os.Exit(1)
	}
	fmt.Printf("sent %d\n", *count)
}
