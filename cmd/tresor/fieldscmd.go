package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// newFieldsCmd is `tresor fields`: classification schemas, and documents
// protected and revealed over JSON lines or CSV.
func newFieldsCmd() *cobra.Command {
	c := &cobra.Command{Use: "fields", Short: "Protect and reveal documents field by field under a classification schema"}
	c.AddCommand(
		clientCmd("put-schema FILE", "Store a classification schema (YAML or JSON) as the version it declares", cobra.ExactArgs(1), nil,
			func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
				def, err := os.ReadFile(args[0])
				if err != nil {
					return err
				}
				r, err := tresorv1.NewFieldServiceClient(conn).PutSchema(cmd.Context(), &tresorv1.PutSchemaRequest{Definition: string(def)})
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), r.GetSchema())
			}),
		clientCmd("get-schema NAME", "Show a classification schema (its latest version)", cobra.ExactArgs(1), nil,
			func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
				r, err := tresorv1.NewFieldServiceClient(conn).GetSchema(cmd.Context(), &tresorv1.GetSchemaRequest{Schema: args[0]})
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), r.GetSchema())
			}),
		documentsCmd("protect", "Protect JSON lines or CSV rows from stdin (or --in) under a schema"),
		documentsCmd("reveal", "Reveal JSON lines or CSV rows from stdin (or --in) as far as the policy allows"),
	)
	return c
}

// documentsCmd is `tresor fields protect|reveal`: one document per JSON
// line, or one per CSV row (the header names the members; every value is
// a string), streamed through ProtectDocuments or RevealDocuments.
func documentsCmd(verb, short string) *cobra.Command {
	var schema, format, in, idField string
	var version int64
	return clientCmd(verb+" --schema NAME", short, cobra.NoArgs, func(fs *pflag.FlagSet) {
		fs.StringVar(&schema, "schema", "", "classification schema name (required)")
		fs.Int64Var(&version, "schema-version", 0, "schema version (0: the latest)")
		fs.StringVar(&format, "format", "jsonl", "jsonl or csv")
		fs.StringVar(&in, "in", "", "input file (default stdin)")
		fs.StringVar(&idField, "id-field", "", "member whose value is the document id (bound into each ciphertext)")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
		if schema == "" {
			return errors.New("--schema is required")
		}
		var r io.Reader = cmd.InOrStdin()
		if in != "" {
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		docs, err := newDocumentReader(format, r, cmd.OutOrStdout())
		if err != nil {
			return err
		}
		fc := tresorv1.NewFieldServiceClient(conn)
		var process func(doc, id string) (string, error)
		switch verb {
		case "protect":
			stream, err := fc.ProtectDocuments(cmd.Context())
			if err != nil {
				return err
			}
			defer stream.CloseSend()
			process = func(doc, id string) (string, error) {
				if err := stream.Send(&tresorv1.ProtectDocumentsRequest{Request: &tresorv1.ProtectDocumentRequest{Schema: schema, SchemaVersion: version, Document: doc, DocumentId: id}}); err != nil {
					return "", err
				}
				resp, err := stream.Recv()
				if err != nil {
					return "", err
				}
				for _, f := range resp.GetResponse().GetFindings() {
					fmt.Fprintf(cmd.ErrOrStderr(), "finding: %s at %s (%s)\n", f.GetDetector(), f.GetPath(), f.GetAction())
				}
				return resp.GetResponse().GetDocument(), nil
			}
		default:
			stream, err := fc.RevealDocuments(cmd.Context())
			if err != nil {
				return err
			}
			defer stream.CloseSend()
			process = func(doc, id string) (string, error) {
				if err := stream.Send(&tresorv1.RevealDocumentsRequest{Request: &tresorv1.RevealDocumentRequest{Schema: schema, SchemaVersion: version, Document: doc, DocumentId: id}}); err != nil {
					return "", err
				}
				resp, err := stream.Recv()
				if err != nil {
					return "", err
				}
				return resp.GetResponse().GetDocument(), nil
			}
		}
		// fail writes out the documents done, whole, so that the output
		// stops cleanly before document n, and returns its error.
		fail := func(n int, err error) error {
			_ = docs.flush()
			return fmt.Errorf("document %d: %w", n, err)
		}
		for n := 1; ; n++ {
			doc, err := docs.next()
			if errors.Is(err, io.EOF) {
				return docs.flush()
			}
			if err != nil {
				return fail(n, err)
			}
			id, err := documentID(doc, idField)
			if err != nil {
				return fail(n, err)
			}
			out, err := process(doc, id)
			if err != nil {
				return fail(n, err)
			}
			if err := docs.write(out); err != nil {
				return err
			}
		}
	})
}

// documentID reads the id member of a JSON object, "" when field is "".
func documentID(doc, field string) (string, error) {
	if field == "" {
		return "", nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		return "", errors.New("not a JSON object")
	}
	var id string
	if err := json.Unmarshal(m[field], &id); err != nil || id == "" {
		return "", fmt.Errorf("--id-field %q: want a non-empty string member", field)
	}
	return id, nil
}

// documentReader reads documents in one format and writes results in it.
type documentReader struct {
	lines  *bufio.Scanner
	out    *bufio.Writer
	csvIn  *csv.Reader
	csvOut *csv.Writer
	header []string
}

func newDocumentReader(format string, r io.Reader, w io.Writer) (*documentReader, error) {
	d := &documentReader{out: bufio.NewWriter(w)}
	switch format {
	case "jsonl":
		d.lines = bufio.NewScanner(r)
		d.lines.Buffer(make([]byte, 64<<10), 8<<20)
	case "csv":
		d.csvIn = csv.NewReader(r)
		d.csvOut = csv.NewWriter(d.out)
		h, err := d.csvIn.Read()
		if err != nil {
			return nil, fmt.Errorf("csv header: %w", err)
		}
		d.header = h
		if err := d.csvOut.Write(h); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("--format %q: want jsonl or csv", format)
	}
	return d, nil
}

func (d *documentReader) next() (string, error) {
	if d.lines != nil {
		for d.lines.Scan() {
			if line := strings.TrimSpace(d.lines.Text()); line != "" {
				return line, nil
			}
		}
		if err := d.lines.Err(); err != nil {
			return "", err
		}
		return "", io.EOF
	}
	rec, err := d.csvIn.Read()
	if err != nil {
		return "", err
	}
	m := make(map[string]string, len(d.header))
	for i, h := range d.header {
		if i < len(rec) {
			m[h] = rec[i]
		}
	}
	b, err := json.Marshal(m)
	return string(b), err
}

// write writes one result: a JSON line, or a CSV row of the header's
// columns (a member the header does not name, such as a blind index, is
// dropped in CSV; use JSON lines to keep it).
func (d *documentReader) write(doc string) error {
	if d.lines != nil {
		_, err := d.out.WriteString(doc + "\n")
		return err
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber() // numbers as they are written, never through float64
	if err := dec.Decode(&m); err != nil {
		return err
	}
	row := make([]string, len(d.header))
	for i, h := range d.header {
		switch v := m[h].(type) {
		case nil:
		case string:
			row[i] = v
		default:
			b, _ := json.Marshal(v)
			row[i] = string(b)
		}
	}
	return d.csvOut.Write(row)
}

func (d *documentReader) flush() error {
	if d.csvOut != nil {
		d.csvOut.Flush()
		if err := d.csvOut.Error(); err != nil {
			return err
		}
	}
	return d.out.Flush()
}
