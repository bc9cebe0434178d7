package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Configuration files. The forwarder, the conductor and the dashboard take
// `--config file.yaml` (or CALLRELAY_CONFIG): a YAML mapping whose keys are
// the process's flag names, e.g.
//
//	listen: 10.0.0.5:3478
//	redis-url: redis+cluster://10.0.2.1:6379,10.0.2.2:6379
//	nats-url: nats://10.0.3.1:4222,nats://10.0.3.2:4222
//
// The file sits between the flags' defaults and the environment (see
// settings.go). A key that is not one of the process's flags is an error
// naming it and its line, as is a value the flag does not accept. Lists
// (several NATS servers) may be written as YAML sequences.
//
// `--print-config` prints the effective configuration in the same form,
// with secrets masked, and exits.

// applyConfigFile sets the flags the file names, but for those given on
// the command line (the environment, applied next, overrides the rest).
func applyConfigFile(fs *flag.FlagSet, path string, onCommandLine map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("--config %s line %d: want a mapping of flag names to values", path, root.Line)
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		f := fs.Lookup(k.Value)
		if f == nil || k.Value == "config" || k.Value == "print-config" {
			errs = append(errs, fmt.Errorf("--config %s line %d: unknown key %q (the keys are this command's flag names; see -h)", path, k.Line, k.Value))
			continue
		}
		val, err := scalarOrList(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("--config %s line %d: %s: %w", path, v.Line, k.Value, err))
			continue
		}
		if onCommandLine[k.Value] {
			continue
		}
		if err := fs.Set(k.Value, val); err != nil {
			errs = append(errs, fmt.Errorf("--config %s line %d: %s: invalid value %q: %w", path, v.Line, k.Value, val, err))
		}
	}
	return errors.Join(errs...)
}

func scalarOrList(v *yaml.Node) (string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		return v.Value, nil
	case yaml.SequenceNode:
		var parts []string
		for _, c := range v.Content {
			if c.Kind != yaml.ScalarNode {
				return "", errors.New("a list of plain values only")
			}
			parts = append(parts, c.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", errors.New("want a value or a list of values")
}

// printEffective writes every flag's effective value as YAML, secrets
// masked.
func printEffective(fs *flag.FlagSet, out io.Writer) error {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || f.Name == "print-config" {
			return
		}
		m[f.Name] = maskFlagValue(f.Name, f.Value.String())
	})
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	for _, n := range names {
		node := yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Value: n}, {Kind: yaml.ScalarNode, Value: m[n]}}}
		b, err := yaml.Marshal(&node)
		if err != nil {
			return err
		}
		buf.Write(b)
	}
	_, err := out.Write(buf.Bytes())
	return err
}

// maskFlagValue hides secrets: keys and passwords entirely but for their
// last four characters, passwords and tokens inside URLs.
func maskFlagValue(name, v string) string {
	switch {
	case v == "":
		return v
	case name == "cluster-key" || name == "signing-key" || strings.HasSuffix(name, "password") || strings.HasSuffix(name, "token"):
		if len(v) <= 8 {
			return "****"
		}
		return "****" + v[len(v)-4:]
	case name == "nats-url":
		return maskNATSURLs(v)
	case strings.HasSuffix(name, "-url"):
		return maskURLSecret(v, false)
	}
	return v
}
