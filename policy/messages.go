package policy

import (
	"errors"

	"github.com/wslimit/wslimit/policy/messages"
)

// compileMessages validates the messages section (package
// policy/messages compiles it; the guard compiles it again for its
// meters, so that the policy's API does not grow) and reports its
// problems with their paths.
func compileMessages(v *validator, cfg Config) {
	if cfg.Messages == nil {
		return
	}
	rules := make([]string, len(cfg.Rules))
	for i, r := range cfg.Rules {
		rules[i] = r.Name
	}
	_, err := messages.Compile(*cfg.Messages, rules, cfg.Mode == "dry_run")
	if err == nil {
		return
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var me *messages.Error
		if errors.As(e, &me) {
			v.add(me.Path, "%s", me.Msg)
		} else {
			v.wrap("messages", "invalid", e)
		}
	}
}
