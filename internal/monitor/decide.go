package monitor

// ResponseDecider chooses the response to a call of the given risk: in a
// server, the Cedar policies (the actions AnomalyBlock, AnomalyThrottle,
// AnomalyStepUp and AnomalyLog, decided strongest first with context.risk,
// the first permitted winning); in tests and simulations, possibly
// [Thresholds].
type ResponseDecider interface {
	DecideResponse(obs Observation, risk int) Response
}

// Thresholds decides responses by risk alone, like the example policies
// (examples/policies/anomaly.cedar) do: the strongest response whose
// threshold the risk reaches. A threshold of 0 or less disables its
// response. It is a ResponseDecider for simulations without the policies.
type Thresholds struct {
	Log, StepUp, Throttle, Block int
	// BlockRestricted and ThrottleRestricted, when positive, block and
	// throttle calls that touch restricted data from these risks on.
	BlockRestricted, ThrottleRestricted int
}

// DefaultThresholds are those of examples/policies/anomaly.cedar.
var DefaultThresholds = Thresholds{Log: 30, StepUp: 50, Throttle: 65, Block: 85, BlockRestricted: 75, ThrottleRestricted: 50}

// DecideResponse returns the strongest response whose threshold risk
// reaches.
func (t Thresholds) DecideResponse(obs Observation, risk int) Response {
	reaches := func(threshold int) bool { return threshold > 0 && risk >= threshold }
	switch {
	case reaches(t.Block), obs.Tier >= TierRestricted && reaches(t.BlockRestricted):
		return Block
	case reaches(t.Throttle), obs.Tier >= TierRestricted && reaches(t.ThrottleRestricted):
		return Throttle
	case reaches(t.StepUp):
		return StepUp
	case reaches(t.Log):
		return Log
	}
	return None
}
