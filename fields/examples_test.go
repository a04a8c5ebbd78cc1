package fields

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExampleSchemas parses every schema under examples/schemas.
func TestExampleSchemas(t *testing.T) {
	files, err := filepath.Glob("../examples/schemas/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("Glob(examples/schemas) = %v, %v; want the example schemas", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			s, err := ParseSchema(b)
			if err != nil {
				t.Fatalf("ParseSchema(%s) err = %v, want nil", f, err)
			}
			if len(s.Keys()) == 0 {
				t.Errorf("ParseSchema(%s) names no keys", f)
			}
		})
	}
}
