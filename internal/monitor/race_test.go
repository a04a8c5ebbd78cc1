//go:build race

package monitor_test

// raceEnabled: the race detector slows the simulations about tenfold, so
// the tests run fewer of them.
const raceEnabled = true
