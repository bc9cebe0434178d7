package report

import (
	"fmt"
	"strconv"

	"github.com/callrelay/callrelay/loadtest"
)

// transportOrder is the order of the transports' rows.
var transportOrder = []string{loadtest.TransportUDP4, loadtest.TransportUDP6, loadtest.TransportTCP, loadtest.TransportTLS}

// hasTransports says whether the transports section says anything: a run
// with devices on TCP or TLS, or on more than one transport.
func hasTransports(r *loadtest.Result) bool {
	_, tcp := r.Transports[loadtest.TransportTCP]
	_, tls := r.Transports[loadtest.TransportTLS]
	return tcp || tls || len(r.Transports) > 1 || r.StreamQueue != nil
}

// transportsSection is the quality per transport: joins and media of the
// devices on UDP (per address family), TCP and TLS, and what the
// forwarders' stream legs dropped.
func transportsSection(r *loadtest.Result) Section {
	s := Section{Title: "Transports",
		Note: "Devices per transport: on TCP or TLS, those whose network blocks UDP (--tcp-share, --tls-share); " +
			"they try UDP first and join over the stream after the client's UDP head start, which their join time includes. " +
			"A call's media starts once its on-time members have joined, so the first audio of UDP devices in calls with TCP or TLS members waits for it too. " +
			"A device's media figures are what it received. TCP and TLS lose nothing on the way and the forwarders resend nothing to them: " +
			"a gap such a device sees comes from the sender's side or from a forwarder's backed-up send queue (below), and NACKs it sends go unanswered."}
	var join, media [][]string
	for _, k := range transportOrder {
		m, ok := r.Transports[k]
		if !ok {
			continue
		}
		join = append(join, []string{k, strconv.Itoa(m.Setups.Attempted), pct(m.SetupSuccessPct),
			p(m.SetupMs, 50), p(m.SetupMs, 95), p(m.SetupMs, 99), p(m.FirstAudioMs, 50), strconv.Itoa(m.OtherTransport)})
		media = append(media, []string{k, p(m.DelayMs, 50), p(m.DelayMs, 95), p(m.DelayMs, 99), ms(m.JitterMs),
			pct(m.LossPct), pct(m.RawLossPct), strconv.FormatUint(m.NACKs, 10), ms(m.MaxGapMs), strconv.FormatUint(m.DecryptFailures, 10)})
	}
	s.Tables = append(s.Tables,
		Table{Title: "Joins per transport (ms unless noted)",
			Columns: []string{"transport", "joins", "success", "setup p50", "p95", "p99", "first audio p50", "joined over another transport"}, Rows: join},
		Table{Title: "Media per transport (ms unless noted)",
			Columns: []string{"transport", "delay p50", "p95", "p99", "jitter mean", "loss after NACK", "before NACK", "NACKs sent", "longest gap", "decrypt failures"}, Rows: media})
	if q := r.StreamQueue; q != nil {
		rows := [][]string{
			{"forwarders read", fmt.Sprintf("%d", q.Forwarders)},
			{"audio packets dropped", strconv.FormatUint(q.AudioDropped, 10)},
			{"video packets dropped", strconv.FormatUint(q.VideoDropped, 10)},
			{"retransmissions skipped", strconv.FormatUint(q.RetransmissionsSkipped, 10)},
			{"connections refused (over --stream-per-ip or --stream-max-conns)", strconv.FormatUint(q.ConnectionsRefused, 10)},
		}
		for _, e := range q.Errors {
			rows = append(rows, []string{"not read", e})
		}
		s.Tables = append(s.Tables, Table{Title: "Forwarders' TCP and TLS legs: send queue drops during the run (from their metrics)", Rows: rows})
	}
	return s
}
