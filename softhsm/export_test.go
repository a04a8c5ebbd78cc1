package softhsm

// ResetProcessEnv forgets the configuration SetProcessEnv chose, so that
// each test (and each -count run) starts afresh.
func ResetProcessEnv() {
	processEnv.Lock()
	processEnv.conf = ""
	processEnv.Unlock()
}
