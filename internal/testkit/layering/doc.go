// Package layering holds the test that keeps callrelay's dependencies
// pointing one way, as STYLE.md and docs/architecture.md say. It reads the
// module's import graph with `go list -e -json ./...` and fails naming
// every import edge (or chain of edges) that breaks a rule, and the rule:
//
//   - forwarder, conductor and dashboard never import each other, in
//     their code or their tests (they meet through protocol on NATS and
//     statestore in Redis; tests that need two of them live in systemtest);
//   - forwarder imports only protocol, statestore and internal leaf
//     libraries; so does conductor;
//   - statestore and client (the shared lower layer) import only protocol
//     and internal leaf libraries;
//   - protocol imports nothing of ours;
//   - internal leaf libraries (every internal/ package outside
//     internal/testkit) import only each other;
//   - no non-test code outside internal/testkit imports internal/testkit;
//   - only cmd/ imports demo, and nothing imports cmd/.
//
// layering is test-only and has no code of its own: nothing may import it,
// and a broken rule is fixed by moving code (a shared format to protocol
// or statestore), never by relaxing the rule to make the tree pass.
package layering
