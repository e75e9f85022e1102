// Package reload hot-reloads a wslimit policy file without a restart.
//
// # Overview
//
// The application loads its first policy itself and then starts a Watcher,
// which hands every later policy that loads to an apply function —
// normally the guard's SetPolicy:
//
//	p, err := policy.LoadFile(path)
//	if err != nil { ... }           // file:line:col and what is wrong
//	g, err := ws.New(p, ws.Options{})
//	if err != nil { ... }
//	w, err := reload.Watch(ctx, path, g.SetPolicy, reload.Options{
//		Logger: logger,
//		SIGHUP: true,
//	})
//	if err != nil { ... }
//	defer w.Close()
//
// A reload is triggered by
//
//   - a change of the file: the directory is watched (fsnotify) and events
//     are filtered by the file's name, so an editor that writes a temporary
//     file and renames it over the old one is seen, and so is a Kubernetes
//     ConfigMap volume, whose "..data" symlink is swapped while the file's
//     own name gets no event. Bursts of events are debounced
//     (Options.Debounce, default 100ms), and a file whose content hashes
//     the same as the running policy's is skipped;
//   - SIGHUP, when Options.SIGHUP is set;
//   - Watcher.Reload, e.g. from an admin endpoint.
//
// SIGHUP and Reload always reload, even an unchanged file: the policy may
// name files of its own (a JWT key_file, hmac secrets in the environment)
// that did change.
//
// A policy that loads is applied and logged at Info ("policy reloaded",
// with the number of rules and a content hash). A file that does not load
// — a syntax error, an unknown field, an invalid value, an unreadable file
// — is logged at Error with its file:line:column message, counted
// (Failures), kept (LastError) and passed to Options.OnError; apply is not
// called and the running policy stays in force.
//
// # Semantics
//
// Stores keep their state by rule name, so a reload carries over what the
// rules it keeps have counted:
//
//   - A rule that keeps its name keeps its live connection slots and its
//     token buckets. Connections admitted before the reload release their
//     slots under the rule names they were admitted with.
//   - A changed cap applies to new handshakes. A raised cap admits at once
//     up to the new cap, counting the connections already open. Connections
//     above a lowered cap are not cut: new handshakes are refused until the
//     live count is below the new cap. Changed rates and bursts are pushed
//     into existing buckets (a raised burst refills at the rate, it does
//     not fill at once).
//   - A renamed rule is a new rule and starts from zero; the slots held
//     under the old name are still released when their connections close.
//   - Everything else the policy holds — keys, exempt blocks, trusted
//     proxies, identity settings, reject mode, dry run, state.max_keys —
//     applies to new handshakes.
//   - The store is built once, when the guard is created: changes of
//     state.store, state.redis and state.on_full are not applied by a
//     reload and need a restart. A reload that changes them applies the
//     rest and logs a Warn line ("state settings need a restart") naming
//     the fields.
//
// A change that lands between the application's own LoadFile and Watch is
// not seen until the next change, SIGHUP or Reload. If the policy file is
// a symlink to a file in another directory (other than a ConfigMap's
// "..data"), edits of the target are not seen: use SIGHUP or Reload.
//
// # Concurrency
//
// A Watcher is safe for concurrent use. Reloads are serialised: apply and
// OnError are called one at a time, in the order of the reloads, from the
// watcher's goroutine (file events, SIGHUP) or from Reload's caller. They
// may call LastError, Hash, Reloads and Failures but must not call Reload.
// The policy swap itself is atomic (policy.Limiter.SetPolicy): the rules of
// every handshake are evaluated entirely under the old policy or entirely
// under the new one.
package reload
