package policy_test

import (
	"errors"
	"fmt"

	"github.com/wslimit/wslimit/policy"
)

// ExampleParse shows what a malformed policy file gets: every problem at
// once, each at its file:line:col with the field's path, sorted by
// position. A misspelt field is one of them; it does not hide the others.
func ExampleParse() {
	doc := []byte(`version: 1
rules:
  - name: per-ip
    key: ip
    conections: 20
    rate: 10/x
  - {name: per-user, key: jwt, connections: 5}
`)
	_, err := policy.Parse(doc, "policy.yaml")
	fmt.Println(err)

	// The problems one by one, for a program that logs each on its own
	// line or shows it beside the file.
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			var pe *policy.Error
			if errors.As(e, &pe) {
				fmt.Printf("line %d, column %d: %s\n", pe.Line, pe.Column, pe.Path)
			}
		}
	}
	// Output:
	// policy.yaml:5:5: rules[0].conections: unknown field "conections" (known: burst, connections, ipv4_prefix, ipv6_prefix, key, max_keys, name, on_missing, rate, tiers)
	// policy.yaml:6:11: rules[0].rate: rate "10/x": period must be s, m, h or a positive duration such as 10s
	// policy.yaml:7:27: rules[1].key: key "jwt" needs identity.jwt to be configured
	// line 5, column 5: rules[0].conections
	// line 6, column 11: rules[0].rate
	// line 7, column 27: rules[1].key
}

// ExampleNew builds a policy in Go instead of YAML: the same Config the
// file decodes into, validated the same way. Errors name the field's path
// (there is no file to point into).
func ExampleNew() {
	p, err := policy.New(policy.Config{
		Version: 1,
		ClientIP: policy.ClientIPConfig{
			TrustedProxies: []string{"10.0.0.0/8"}, // the load balancers
		},
		Rules: []policy.RuleConfig{
			{Name: "per-ip", Key: "ip", Connections: 20, Rate: "10/s", Burst: 20},
			{Name: "per-subnet", Key: "subnet", IPv6Prefix: 56, Connections: 200},
			{Name: "everyone", Key: "global", Connections: 10000},
		},
		Reject: policy.RejectConfig{Mode: "auto"},
	})
	if err != nil {
		panic(err)
	}
	for _, c := range p.Rules() {
		fmt.Printf("%s: connections %d, rate %v/s, burst %d\n", c.Rule, c.Conns, float64(c.Limit), c.Burst)
	}

	_, err = policy.New(policy.Config{
		Version: 1,
		Rules:   []policy.RuleConfig{{Name: "per-ip", Key: "ip", Burst: 5}},
	})
	fmt.Println(err)
	// Output:
	// per-ip: connections 20, rate 10/s, burst 20
	// per-subnet: connections 200, rate 0/s, burst 0
	// everyone: connections 10000, rate 0/s, burst 0
	// policy: rules[0].burst: burst needs a rate
	// policy: rules[0]: rule "per-ip" limits nothing: set connections, rate, or both
}
