package governance

import (
	"github.com/tresorkms/tresor/internal/config"
)

// CheckConfig loads and validates the configuration file at path with
// environment overrides from env (os.Environ form; nil means the process
// environment), as `tresor serve` does. It returns the configuration and
// whether it loaded; a file that does not load is one error finding whose
// Err wraps the config package's error (config.ErrInvalid for a malformed
// or incomplete file). Values the decoder quotes are masked: the file may
// hold a password under the wrong key.
func CheckConfig(path string, env []string) (config.Config, bool, []Finding) {
	cfg, err := config.Load(path, env)
	if err != nil {
		return config.Config{}, false, []Finding{{
			Check: ConfigCheck, Severity: SeverityError, Subject: path,
			Message: redactValues(err.Error()), Err: err,
		}}
	}
	return cfg, true, []Finding{{Check: ConfigCheck, Severity: SeverityInfo, Subject: path, Message: "configuration OK"}}
}
