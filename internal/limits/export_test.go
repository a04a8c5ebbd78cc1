package limits

// Tracked returns how many principals l keeps buckets for.
func (l *Limiter) Tracked() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
