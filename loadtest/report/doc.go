// Package report renders the result of a load test as one self-contained
// HTML page that capacity planners read: a pass/fail banner with the verdict
// against the targets, time-series charts, percentile tables, the knee found
// by a ramp and the load generator's own health warnings.
//
// Charts are drawn by this package as inline SVG (chart.go, bars.go) from the
// standard library only: the page loads nothing from the network, runs no
// script and needs no browser download or CDN. Output is deterministic: the
// same Input renders byte-for-byte the same page.
//
// The renderer has its own small model (Input) and never imports the load
// test runner, so a result can be mapped onto it in one place and the page
// can be rendered from a JSON result long after the run. It never measures,
// judges or rounds anything itself: the caller decides the verdict and
// formats the numbers it wants shown.
package report
