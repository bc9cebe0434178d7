package protocol

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"
)

// TestMediaFuzzSeeds checks that the committed seed corpora of FuzzClassify,
// FuzzRTPHeader, FuzzRelayApp and FuzzRTCPWalk under testdata/fuzz hold
// every seed this file generates, byte for byte (go test runs those files as ordinary test
// cases, so a stale corpus would silently test less). To rewrite them:
//
//	CALLRELAY_WRITE_FUZZ_SEEDS=1 go test -run TestMediaFuzzSeeds ./protocol/
func TestMediaFuzzSeeds(t *testing.T) {
	// Not exact: these directories also hold inputs the fuzzer found.
	checkFuzzSeeds(t, mediaFuzzSeeds(t), false)
}

var mediaSeedNameRe = regexp.MustCompile(`[^a-z0-9]+`)

func mediaSeedName(s string) string {
	return strings.Trim(mediaSeedNameRe.ReplaceAllString(strings.ToLower(s), "-"), "-")
}

func mediaFuzzSeeds(t *testing.T) map[string]map[string][]byte {
	t.Helper()
	classify := map[string][]byte{
		"stun-binding": {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
		"stun-short":   {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3},
		"rtp":          {0x80, 0x6f, 0x12, 0x34, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xaa},
		"rtp-short":    {0x80, 0x6f, 0x12, 0x34, 0, 0, 3, 0xc0, 0xde},
		"rtcp-rr":      {0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1},
		"rtcp-short":   {0x80, 0xc9, 0x00, 0x01, 0, 0},
		"dtls":         {0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"empty":        {},
	}
	rtpSeeds := map[string][]byte{}
	for _, tt := range rtpParseTests {
		rtpSeeds[mediaSeedName(tt.name)] = tt.in
	}
	app := map[string][]byte{}
	for i, m := range relaySeedMessages() {
		pkt, err := MarshalRelayApp(0x55667788, m)
		require.NoError(t, err)
		name := fmt.Sprintf("%02d-%s", i, mediaSeedName(strings.TrimPrefix(fmt.Sprintf("%T", m), "*protocol.")))
		app[name] = pkt
		app[name+"-truncated"] = pkt[:len(pkt)-2]
		if i == 0 {
			classify["rtcp-crly"] = pkt
		}
	}
	crly, err := NewRelayApp(7, &LoudOnset{AudioSSRC: 7, Level: 3})
	require.NoError(t, err)
	compound, err := rtcp.Marshal([]rtcp.Packet{
		&rtcp.ReceiverReport{SSRC: 7, Reports: []rtcp.ReceptionReport{{SSRC: 9, LastSequenceNumber: 5}}},
		&rtcp.ApplicationDefined{SubType: 1, SSRC: 7, Name: "ABCD", Data: []byte{1, 2, 3, 4}},
		crly,
	})
	require.NoError(t, err)
	app["compound-rr-app-crly"] = compound
	app["loud-onset-body-truncated"] = []byte{0x85, 0xcc, 0x00, 0x03, 0, 0, 0, 0, 'C', 'R', 'L', 'Y', 0, 0, 0, 1}
	app["unknown-subtype"] = []byte{0x9f, 0xcc, 0x00, 0x02, 0, 0, 0, 0, 'C', 'R', 'L', 'Y'}
	// The unauthenticated MigrateTo of earlier versions (12-byte body).
	app["migrate-to-unauthenticated"] = []byte{0x86, 0xcc, 0x00, 0x05, 0, 0, 0, 0, 'C', 'R', 'L', 'Y',
		0x01, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88, 0xc0, 0x00, 0x02, 0x0a}
	// A MigrateTo with transport 3 (0 UDP, 1 TCP, 2 TLS are defined).
	app["migrate-to-transport-3"] = append([]byte{0x86, 0xcc, 0x00, 0x0c, 0, 0, 0, 0, 'C', 'R', 'L', 'Y',
		0x01, 0x03, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, make([]byte, 12+4+16)...)
	return map[string]map[string][]byte{
		"FuzzClassify":        classify,
		"FuzzRTPHeader":       rtpSeeds,
		"FuzzRelayApp":        app,
		"FuzzRTCPWalk":        rtcpWalkSeeds(t),
		"FuzzMigrateToVerify": migrateVerifySeeds(t),
	}
}
