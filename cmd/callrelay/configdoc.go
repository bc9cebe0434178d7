package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"flag"
	"os"
	"sort"
	"strings"
	"text/template"
)

// docs/configuration.md is this template over the processes' flags:
// `go generate ./cmd/callrelay` (callrelay config-doc FILE) rewrites it,
// and TestConfigurationDocIsGenerated fails while it is stale.
//
//go:embed configuration.md.tmpl
var configDocTemplate string

// machineDefaults are defaults taken from the machine at start; the docs
// say where they come from instead of this machine's figure.
var machineDefaults = map[string]string{
	"forwarder readers":   "the number of CPUs",
	"forwarder cpu-cores": "the number of CPUs",
}

type docProcess struct {
	Name, About string
	File        bool
	Rows        []docRow
}

type docRow struct{ Key, Env, Type, Default, Meaning string }

// runConfigDoc writes the configuration document to the file named, or to
// stdout.
func runConfigDoc(_ context.Context, args []string) error {
	if len(args) > 1 || len(args) == 1 && strings.HasPrefix(args[0], "-") {
		return errors.New("usage: callrelay config-doc [FILE]: writes docs/configuration.md's text to FILE, else to stdout")
	}
	b, err := renderConfigDoc()
	if err != nil {
		return err
	}
	if len(args) == 0 {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(args[0], b, 0o644)
}

// renderConfigDoc renders every process's keys, variables, types,
// defaults and meanings into the template.
func renderConfigDoc() ([]byte, error) {
	var data struct {
		Processes []docProcess
		Shared    string
	}
	for _, p := range processes {
		name, about, file := p.spec()
		dp := docProcess{Name: name, About: about, File: file}
		p.flagSet().VisitAll(func(f *flag.Flag) { dp.Rows = append(dp.Rows, docRowOf(name, f)) })
		data.Processes = append(data.Processes, dp)
	}
	var shared []string
	for k := range sharedKeys {
		shared = append(shared, "`"+k+"`")
	}
	sort.Strings(shared)
	data.Shared = strings.Join(shared, ", ")
	sentence := func(s string) string { return strings.ToUpper(s[:1]) + s[1:] + "." }
	t, err := template.New("configuration.md").Funcs(template.FuncMap{"sentence": sentence}).Parse(configDocTemplate)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func docRowOf(proc string, f *flag.Flag) docRow {
	typ, meaning := flag.UnquoteUsage(f)
	if typ == "" {
		typ = "bool"
	}
	def := "`" + f.DefValue + "`"
	switch {
	case machineDefaults[proc+" "+f.Name] != "":
		def = machineDefaults[proc+" "+f.Name]
	case f.DefValue == "":
		def = ""
	}
	env := "(flag only)"
	if e := envName(proc, f.Name); e != "" {
		env = "`" + e + "`"
	}
	cell := strings.NewReplacer("|", `\|`, "\n", " ")
	return docRow{Key: "`" + f.Name + "`", Env: env, Type: typ, Default: cell.Replace(def), Meaning: cell.Replace(meaning)}
}
