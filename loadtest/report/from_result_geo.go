package report

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/callrelay/callrelay/loadtest"
)

// maxGeoRows bounds the per-call table: the calls with the worst
// mouth-to-ear estimates come first.
const maxGeoRows = 30

// geoSection is where the cities' calls were placed and their worst
// mouth-to-ear estimates (Plan.Cities).
func geoSection(r *loadtest.Result) Section {
	g := r.Geo
	s := Section{Title: "Cities and placement",
		Note: fmt.Sprintf("Each city's devices reach the forwarders through an access link on the generator's host that adds the city's one-way delay, jitter and loss to every datagram, each way. "+
			"A call's worst mouth-to-ear estimate is the largest, over its ordered member pairs, of the 95th percentile of the one-way delay the receiver measured from that sender "+
			"(sender's access link + relay path with any trunk + receiver's access link) plus %s for the devices (20 ms Opus frame, 5 ms look-ahead, 40 ms jitter buffer). "+
			"A member's placement is the forwarder that had it when its call closed; a call spans regions when its members' forwarders are in two or more (a trunk joins them).", ms(g.AllowanceMs))}
	s.Tables = append(s.Tables, Table{Title: "Calls",
		Rows: [][]string{
			{"calls measured", strconv.Itoa(g.Calls)},
			{"placed in one region", strconv.Itoa(g.OneRegion)},
			{"spanning regions", fmt.Sprintf("%d (%s)", g.Spanning, pct(g.SpanningPct))},
			{"worst mouth-to-ear p50 / p95 / max", fmt.Sprintf("%s / %s / %s ms", p(g.MouthToEarMs, 50), p(g.MouthToEarMs, 95), num3(g.MouthToEarMs.Max))},
			{"datagrams the access links dropped at a full queue", strconv.FormatUint(g.AccessDropped, 10)},
		}})
	var cities [][]string
	for _, c := range g.Cities {
		cities = append(cities, []string{c.Name, c.Region, strconv.Itoa(c.Devices), placedIn(c.PlacedIn),
			strconv.Itoa(c.CallsOneRegion), strconv.Itoa(c.CallsSpanning), p(c.MouthToEarMs, 50), p(c.MouthToEarMs, 95)})
	}
	s.Tables = append(s.Tables, Table{Title: "Per city (the calls with a member there; ms)",
		Columns: []string{"city", "region", "devices", "placed in", "calls in one region", "spanning", "worst mouth-to-ear p50", "p95"}, Rows: cities})
	calls := append([]loadtest.CallRecord(nil), g.CallRecords...)
	sort.SliceStable(calls, func(i, j int) bool { return calls[i].WorstMouthToEarMs > calls[j].WorstMouthToEarMs })
	var rows [][]string
	for i, c := range calls {
		if i == maxGeoRows {
			break
		}
		rows = append(rows, []string{strconv.Itoa(c.No), c.Class, placement(c), strings.Join(c.Regions, " + "),
			num3(c.WorstMouthToEarMs), fmt.Sprintf("%d → %d", c.WorstFrom, c.WorstTo), num3(c.WorstPathMs), num3(c.WorstAccessMs)})
	}
	title := "Calls by worst mouth-to-ear estimate (ms)"
	if len(calls) > maxGeoRows {
		title += fmt.Sprintf(": the worst %d of %d (all in the result JSON, geo.call_records)", maxGeoRows, len(calls))
	}
	s.Tables = append(s.Tables, Table{Title: title,
		Columns: []string{"call", "class", "members (city @ forwarder region)", "regions", "worst mouth-to-ear", "pair", "its path p95", "of which access"}, Rows: rows})
	return s
}

func placedIn(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		name := k
		if name == "" {
			name = "(unknown)"
		}
		parts = append(parts, fmt.Sprintf("%s %d", name, m[k]))
	}
	return strings.Join(parts, ", ")
}

func placement(c loadtest.CallRecord) string {
	parts := make([]string, 0, len(c.Members))
	for _, m := range c.Members {
		where := m.Region
		if m.ForwarderID != "" {
			where += " " + m.ForwarderID
		}
		parts = append(parts, fmt.Sprintf("%d %s @ %s", m.Index, m.City, where))
	}
	return strings.Join(parts, "; ")
}
