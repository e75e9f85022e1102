package reload_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/reload"
	"github.com/wslimit/wslimit/ws"
)

func ExampleWatch() {
	dir, err := os.MkdirTemp("", "wslimit")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "policy.yaml")
	write := func(conns int) {
		doc := fmt.Sprintf("version: 1\nrules:\n  - name: per-ip\n    key: ip\n    connections: %d\n", conns)
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	write(20)

	// The application loads the first policy itself.
	p, err := policy.LoadFile(path)
	if err != nil {
		log.Fatal(err) // file:line:col and what is wrong
	}
	g, err := ws.New(p, ws.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()

	// The watcher hands every later policy that loads to g.SetPolicy: on
	// SIGHUP, on Reload, and once file events have been quiet for Debounce
	// (100ms by default; a minute here, so that the Reload below applies
	// the change, and not the file event, however slow the machine).
	w, err := reload.Watch(context.Background(), path, g.SetPolicy, reload.Options{SIGHUP: true, Debounce: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	write(50)
	if err := w.Reload(); err != nil { // as an admin endpoint would
		log.Print(err)
	}
	fmt.Println(g.Limiter().Policy().Rules()[0].Conns, w.Reloads(), w.Failures())
	// Output: 50 1 0
}
