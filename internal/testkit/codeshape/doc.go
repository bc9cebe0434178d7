// Package codeshape holds the test that keeps the repository's code in the
// shape STYLE.md asks for: no function over 80 lines and no file over 800
// lines in the Go code that ships (test files are not held to it). It walks
// the module's source with go/parser and fails listing every offender.
//
// codeshape is test-only and has no code of its own: nothing may import it,
// and its test must never skip or relax a limit to make the tree pass:
// split the function or the file instead.
package codeshape
