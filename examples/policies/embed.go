// Package policies holds tresor's Cedar schema (tresor.cedarschema) and
// example policies for a bank (*.cedar; README.md explains each rule).
// `tresor dev` writes the schema from [Files]; production deployments copy
// the schema and write their own policies, starting from these.
package policies

import "embed"

// Files holds the schema and the example policies.
//
//go:embed tresor.cedarschema *.cedar
var Files embed.FS

// SchemaFile is the name of the schema in Files.
const SchemaFile = "tresor.cedarschema"
