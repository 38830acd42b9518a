package naming

import "slices"

// Filter selects what a query or a subscription sees.
type Filter struct {
	// HealthyOnly leaves out unhealthy instances, unless the protection
	// threshold is hit.
	HealthyOnly bool
	// Clusters, when not empty, keeps only these clusters.
	Clusters []string
}

// Select applies a filter and the protection threshold to a service's
// instances. Disabled instances are always left out. When HealthyOnly is set
// and the healthy share of the remaining instances is below threshold, all of
// them are returned and protected is true, so that callers are not stampeded
// onto a few survivors. The input is not modified; the result is sorted.
func Select(all []Instance, f Filter, threshold float64) (out []Instance, protected bool) {
	out = make([]Instance, 0, len(all))
	healthy := 0
	for i := range all {
		in := &all[i]
		if !in.Enabled {
			continue
		}
		if len(f.Clusters) > 0 && !slices.Contains(f.Clusters, in.Cluster) {
			continue
		}
		if in.Healthy {
			healthy++
		}
		out = append(out, *in)
	}
	if f.HealthyOnly && len(out) > 0 {
		if threshold > 0 && float64(healthy)/float64(len(out)) < threshold {
			protected = true
		} else {
			kept := out[:0]
			for _, in := range out {
				if in.Healthy {
					kept = append(kept, in)
				}
			}
			out = kept
		}
	}
	SortInstances(out)
	return out, protected
}
