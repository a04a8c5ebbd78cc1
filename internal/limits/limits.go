// Package limits enforces tresor's rate limits and usage budgets. The
// server's interceptor chain consults it after authorization, so that the
// principal is known and a refused call has cost little.
//
// Reach first for [NewLimiter] and [Limiter.Allow]: in-memory token buckets,
// one per principal and action class ("crypto", "admin", "read", ...) and one
// across all principals, checked on every request.
//
// [NewBudgets] and [Budgets.Consume] count the uses of an action on data of a
// sensitivity tier (say, decrypting restricted fields) per principal, in fixed
// windows such as 5 a second and 1000 a day. The counts live in the key store
// (its ConsumeBudget method), so a budget holds across restarts and across
// replicas sharing one database.
package limits

import "errors"

// ErrInvalidConfig means NewLimiter or NewBudgets got a configuration it
// cannot enforce. The wrapping error says which part.
var ErrInvalidConfig = errors.New("limits: invalid configuration")
