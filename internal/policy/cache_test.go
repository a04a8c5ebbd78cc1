package policy

import (
	"fmt"
	"testing"
)

// The entity caches must never answer for a different principal or key.
func TestDecideCachesByEveryInput(t *testing.T) {
	e := writePolicies(t, map[string]string{"p.cedar": `
@id("analyst")
permit (principal in Tresor::Role::"analyst", action == Tresor::Action::"Decrypt", resource)
when { resource.hasTag("env") && resource.getTag("env") == "prod" && resource.tier_level <= 3 };`})
	withRoles := func(roles ...string) Principal {
		return Principal{Workload: analyticsWL, Subject: "alice", Roles: roles}
	}
	key := func(tier Tier, labels map[string]string) Resource {
		return Resource{Kind: ResourceKey, Name: "k", Tier: tier, Owner: ledgerWL, Labels: labels}
	}
	prod := map[string]string{"env": "prod", "app": "x"}
	tests := []struct {
		name  string
		p     Principal
		r     Resource
		allow bool
	}{
		{"analyst, prod key", withRoles("analyst"), key(TierConfidential, prod), true},
		{"same subject without role", withRoles(), key(TierConfidential, prod), false},
		{"same subject, role split", withRoles("ana", "lyst"), key(TierConfidential, prod), false},
		{"analyst again", withRoles("analyst"), key(TierConfidential, prod), true},
		{"same key, restricted", withRoles("analyst"), key(TierRestricted, prod), false},
		{"same key, env dev", withRoles("analyst"), key(TierConfidential, map[string]string{"env": "dev", "app": "x"}), false},
		{"same key, labels swapped", withRoles("analyst"), key(TierConfidential, map[string]string{"env": "x", "app": "prod"}), false},
		{"same key, no labels", withRoles("analyst"), key(TierConfidential, nil), false},
		{"same key, prod again", withRoles("analyst"), key(TierConfidential, prod), true},
	}
	for range 2 { // the second round is served from the caches
		for _, tc := range tests {
			if d := e.Decide(req(tc.p, "Decrypt", tc.r, office())); d.Allow != tc.allow {
				t.Errorf("Decide(%s) = %v, want %v", tc.name, d.Allow, tc.allow)
			}
		}
	}
}

func TestCacheKeysAreInjective(t *testing.T) {
	principals := []Principal{
		{Workload: "a#", Subject: "b"},
		{Workload: "a", Subject: "#b"},
		{Workload: "a", Subject: "", Roles: []string{"x,y"}},
		{Workload: "a", Subject: "", Roles: []string{"x", "y"}},
		{Workload: "a", Subject: "", Scopes: []string{"x", "y"}},
		{Workload: "a", Subject: "", Roles: []string{"x"}, Scopes: []string{"y"}},
		{Workload: "a1:b", Subject: ""},
		{Workload: "a", Subject: "1:b"},
	}
	seen := map[string]int{}
	for i, p := range principals {
		k := string(principalKey(nil, p))
		if j, dup := seen[k]; dup {
			t.Errorf("principalKey(%+v) = principalKey(%+v) = %q", p, principals[j], k)
		}
		seen[k] = i
	}
	resources := []Resource{
		{Kind: ResourceKey, Name: "k", Tier: TierPublic},
		{Kind: ResourceKey, Name: "k", Tier: TierInternal},
		{Kind: ResourceService, Name: "k", Tier: TierPublic},
		{Kind: ResourceKey, Name: "k", Owner: "o", Tier: TierPublic},
		{Kind: ResourceKey, Name: "ko", Tier: TierPublic},
		{Kind: ResourceKey, Name: "k", Tier: TierPublic, Labels: map[string]string{"a": "b"}},
		{Kind: ResourceKey, Name: "k", Tier: TierPublic, Labels: map[string]string{"b": "a"}},
		{Kind: ResourceKey, Name: "k", Tier: TierPublic, Labels: map[string]string{"a": "", "b": ""}},
	}
	seen = map[string]int{}
	for i, r := range resources {
		k := string(resourceKey(nil, r))
		if j, dup := seen[k]; dup {
			t.Errorf("resourceKey(%+v) = resourceKey(%+v) = %q", r, resources[j], k)
		}
		seen[k] = i
	}
	many := map[string]string{}
	for i := range 40 {
		many[fmt.Sprintf("l%02d", i)] = "v"
	}
	if a, b := resourceKey(nil, Resource{Labels: many}), resourceKey(nil, Resource{Labels: many}); string(a) != string(b) {
		t.Errorf("resourceKey(40 labels) is not deterministic")
	}
}

func TestEntityCacheIsBounded(t *testing.T) {
	e := loadExamples(t)
	for i := range entityCacheSize + 10 {
		p := Principal{Workload: fmt.Sprintf("spiffe://bank.example/w%d", i)}
		if d := e.Decide(req(p, "CheckHealth", service, office())); !d.Allow {
			t.Fatalf("Decide(w%d, CheckHealth) = deny, want allow", i)
		}
	}
	if n := len(e.principals.m); n > entityCacheSize {
		t.Errorf("principal cache holds %d entities, want at most %d", n, entityCacheSize)
	}
}
