package protocol

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"
)

// rtcpReport is one report block as ReportBlock returns it.
type rtcpReport struct {
	SSRC       uint32
	Fraction   uint8
	TotalLost  uint32
	HighestSeq uint32
	Jitter     uint32
}

// rtcpWant is what a test expects the walker to show for one packet.
type rtcpWant struct {
	Type, Count   uint8
	Size          int
	Sender, Media uint32
	Nacks         [][2]uint16
	PLI, RelayApp bool
	FIRs          [][2]uint32 // SSRC, command sequence number
	REMB          uint64
	REMBOK        bool
	Reports       []rtcpReport
}

// rtcpGot reads everything the walker shows for its current packet.
func rtcpGot(w *RTCPWalker) rtcpWant {
	g := rtcpWant{
		Type: w.Type(), Count: w.Count(), Size: len(w.Packet()),
		Sender: w.SenderSSRC(), Media: w.MediaSSRC(), PLI: w.IsPLI(), RelayApp: w.IsRelayApp(),
	}
	g.REMB, g.REMBOK = w.REMB()
	for i := range w.NackPairs() {
		pid, blp := w.NackPair(i)
		g.Nacks = append(g.Nacks, [2]uint16{pid, blp})
	}
	for i := range w.FIREntries() {
		ssrc, seq := w.FIREntry(i)
		g.FIRs = append(g.FIRs, [2]uint32{ssrc, uint32(seq)})
	}
	for i := range w.ReportBlocks() {
		var r rtcpReport
		r.SSRC, r.Fraction, r.TotalLost, r.HighestSeq, r.Jitter = w.ReportBlock(i)
		g.Reports = append(g.Reports, r)
	}
	return g
}

// rtcpWalkAll walks b and returns what it showed for every packet.
func rtcpWalkAll(b []byte) ([]rtcpWant, error) {
	var w RTCPWalker
	w.Reset(b)
	var got []rtcpWant
	for w.Next() {
		got = append(got, rtcpGot(&w))
	}
	return got, w.Err()
}

var rtcpWalkTests = []struct {
	name string
	in   []byte
	want []rtcpWant
	err  error
}{
	{
		name: "generic NACK",
		in: []byte{
			0x81, 0xcd, 0x00, 0x04, // V=2 FMT=1, PT=205 RTPFB, length 4 (20 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0xca, 0xfe, 0x00, 0x01, // media SSRC
			0x12, 0x34, 0x00, 0x05, // PID 0x1234, BLP 0x0005: 0x1234, 0x1235, 0x1237 lost
			0xff, 0xff, 0x80, 0x00, // PID 0xffff, BLP 0x8000: 0xffff and 0x000f lost
		},
		want: []rtcpWant{{
			Type: 205, Count: 1, Size: 20, Sender: 1, Media: 0xcafe0001,
			Nacks: [][2]uint16{{0x1234, 0x0005}, {0xffff, 0x8000}},
		}},
	},
	{
		name: "PLI",
		in: []byte{
			0x81, 0xce, 0x00, 0x02, // V=2 FMT=1, PT=206 PSFB, length 2 (12 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0xca, 0xfe, 0x00, 0x01, // media SSRC
		},
		want: []rtcpWant{{Type: 206, Count: 1, Size: 12, Sender: 1, Media: 0xcafe0001, PLI: true}},
	},
	{
		name: "FIR, RFC 5104: media SSRC 0, two streams in the FCI",
		in: []byte{
			0x84, 0xce, 0x00, 0x06, // V=2 FMT=4, PT=206 PSFB, length 6 (28 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x00, // media SSRC 0 (RFC 5104 4.3.1.2)
			0xca, 0xfe, 0x00, 0x01, // FCI entry: SSRC
			0x07, 0x00, 0x00, 0x00, // command sequence number 7, reserved
			0xca, 0xfe, 0x00, 0x02, // FCI entry: SSRC
			0xff, 0x00, 0x00, 0x00, // command sequence number 255, reserved
		},
		want: []rtcpWant{{Type: 206, Count: 4, Size: 28, Sender: 1, FIRs: [][2]uint32{{0xcafe0001, 7}, {0xcafe0002, 255}}}},
	},
	{
		name: "REMB 1.5 Mbit/s",
		in: []byte{
			0x8f, 0xce, 0x00, 0x05, // V=2 FMT=15, PT=206 PSFB, length 5 (24 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x00, // media SSRC 0
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x01, 0x0e, 0xdc, 0x6c, // 1 SSRC; exponent 3, mantissa 187500: 1500000 bit/s
			0xca, 0xfe, 0x00, 0x01, // SSRC the estimate applies to
		},
		want: []rtcpWant{{Type: 206, Count: 15, Size: 24, Sender: 1, REMB: 1_500_000, REMBOK: true}},
	},
	{
		name: "REMB, largest exponent that fits",
		in: []byte{
			0x8f, 0xce, 0x00, 0x04, // V=2 FMT=15, PT=206 PSFB, length 4 (20 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x00, // media SSRC 0
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x00, 0xbb, 0xff, 0xff, // no SSRCs; exponent 46, mantissa 2^18-1
		},
		want: []rtcpWant{{Type: 206, Count: 15, Size: 20, Sender: 1, REMB: (1<<18 - 1) << 46, REMBOK: true}},
	},
	{
		name: "REMB too large for 64 bits saturates",
		in: []byte{
			0x8f, 0xce, 0x00, 0x04, // V=2 FMT=15, PT=206 PSFB, length 4 (20 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x07, // media SSRC 7 (pion refuses this; the walker does not)
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x00, 0xbe, 0x00, 0x00, // no SSRCs; exponent 47, mantissa 2^17: 2^64
		},
		want: []rtcpWant{{Type: 206, Count: 15, Size: 20, Sender: 1, Media: 7, REMB: math.MaxUint64, REMBOK: true}},
	},
	{
		name: "REMB exponent 63",
		in: []byte{
			0x8f, 0xce, 0x00, 0x04, // V=2 FMT=15, PT=206 PSFB, length 4 (20 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x00, // media SSRC 0
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x00, 0xfc, 0x00, 0x02, // no SSRCs; exponent 63, mantissa 2: 2^64
		},
		want: []rtcpWant{{Type: 206, Count: 15, Size: 20, Sender: 1, REMB: math.MaxUint64, REMBOK: true}},
	},
	{
		name: "application layer feedback other than REMB",
		in: []byte{
			0x8f, 0xce, 0x00, 0x03, // V=2 FMT=15, PT=206 PSFB, length 3 (16 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x02, // media SSRC 2
			0x47, 0x4f, 0x4f, 0x47, // "GOOG"
		},
		want: []rtcpWant{{Type: 206, Count: 15, Size: 16, Sender: 1, Media: 2}},
	},
	{
		name: "receiver report",
		in: []byte{
			0x81, 0xc9, 0x00, 0x07, // V=2 RC=1, PT=201 RR, length 7 (32 bytes)
			0x00, 0x00, 0x00, 0x01, // SSRC 1
			0xca, 0xfe, 0x00, 0x01, // reportee
			0x19, 0x00, 0x00, 0x2a, // fraction lost 25/256, 42 lost
			0x00, 0x01, 0x12, 0x34, // extended highest sequence number 0x11234
			0x00, 0x00, 0x00, 0x64, // jitter 100
			0x00, 0x00, 0x00, 0x00, // last SR
			0x00, 0x00, 0x00, 0x00, // delay since last SR
		},
		want: []rtcpWant{{
			Type: 201, Count: 1, Size: 32, Sender: 1,
			Reports: []rtcpReport{{SSRC: 0xcafe0001, Fraction: 25, TotalLost: 42, HighestSeq: 0x11234, Jitter: 100}},
		}},
	},
	{
		name: "sender report",
		in: []byte{
			0x81, 0xc8, 0x00, 0x0c, // V=2 RC=1, PT=200 SR, length 12 (52 bytes)
			0xca, 0xfe, 0x00, 0x01, // SSRC
			0xe9, 0x4e, 0x1c, 0x00, // NTP timestamp
			0x80, 0x00, 0x00, 0x00,
			0x00, 0x01, 0x5f, 0x90, // RTP timestamp 90000
			0x00, 0x00, 0x00, 0x0a, // 10 packets
			0x00, 0x00, 0x03, 0xe8, // 1000 octets
			0x00, 0x00, 0x00, 0x02, // reportee 2
			0x00, 0xff, 0xff, 0xff, // nothing lost lately, -1 lost (a duplicate)
			0x00, 0x00, 0x00, 0x07, // extended highest sequence number 7
			0x00, 0x00, 0x00, 0x00, // jitter 0
			0x00, 0x00, 0x00, 0x00, // last SR
			0x00, 0x00, 0x00, 0x00, // delay since last SR
		},
		want: []rtcpWant{{
			Type: 200, Count: 1, Size: 52, Sender: 0xcafe0001,
			Reports: []rtcpReport{{SSRC: 2, TotalLost: 0xffffff, HighestSeq: 7}},
		}},
	},
	{
		name: "compound: RR, PLI, BYE",
		in: []byte{
			0x80, 0xc9, 0x00, 0x01, // V=2 RC=0, PT=201 RR, length 1 (8 bytes)
			0x00, 0x00, 0x00, 0x01, // SSRC 1
			0x81, 0xce, 0x00, 0x02, // V=2 FMT=1, PT=206 PSFB (PLI), length 2
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x09, // media SSRC 9
			0x81, 0xcb, 0x00, 0x01, // V=2 SC=1, PT=203 BYE, length 1
			0x00, 0x00, 0x00, 0x01, // SSRC 1
		},
		want: []rtcpWant{
			{Type: 201, Size: 8, Sender: 1},
			{Type: 206, Count: 1, Size: 12, Sender: 1, Media: 9, PLI: true},
			{Type: 203, Count: 1, Size: 8, Sender: 1},
		},
	},
	{
		name: "padded RR",
		in: []byte{
			0xa0, 0xc9, 0x00, 0x02, // V=2 P RC=0, PT=201 RR, length 2 (12 bytes)
			0x00, 0x00, 0x00, 0x01, // SSRC 1
			0x00, 0x00, 0x00, 0x04, // 4 bytes padding, count last
		},
		want: []rtcpWant{{Type: 201, Size: 12, Sender: 1}},
	},
	{
		name: "padded NACK",
		in: []byte{
			0xa1, 0xcd, 0x00, 0x04, // V=2 P FMT=1, PT=205 RTPFB, length 4 (20 bytes)
			0x00, 0x00, 0x00, 0x01, // sender SSRC 1
			0x00, 0x00, 0x00, 0x02, // media SSRC 2
			0x00, 0x64, 0x00, 0x00, // PID 100
			0x00, 0x00, 0x00, 0x04, // 4 bytes padding (pion reads them as a NACK entry)
		},
		want: []rtcpWant{{Type: 205, Count: 1, Size: 20, Sender: 1, Media: 2, Nacks: [][2]uint16{{100, 0}}}},
	},
	{
		name: "CRLY Rejoin, SDES and XR pass",
		in: []byte{
			0x87, 0xcc, 0x00, 0x02, // V=2 subtype=7, PT=204 APP, length 2
			0x00, 0x00, 0x00, 0x00, // SSRC 0
			0x43, 0x52, 0x4c, 0x59, // "CRLY"
			0x81, 0xca, 0x00, 0x02, // V=2 SC=1, PT=202 SDES, length 2
			0x00, 0x00, 0x00, 0x05, // chunk SSRC 5
			0x00, 0x00, 0x00, 0x00, // end of items, padding
			0x80, 0xcf, 0x00, 0x00, // V=2, PT=207 XR, length 0: a bare header
		},
		want: []rtcpWant{
			{Type: 204, Count: 7, Size: 12, RelayApp: true},
			{Type: 202, Count: 1, Size: 12, Sender: 5},
			{Type: 207, Size: 4},
		},
	},
	{
		name: "README: compound RR, NACK, REMB",
		in: []byte{
			0x81, 0xc9, 0x00, 0x07, // V=2 RC=1, PT=201 RR, length 7 (32 bytes)
			0x00, 0x00, 0x00, 0x07, // SSRC 7 (the receiving device's)
			0xca, 0xfe, 0x00, 0x01, // reportee: the video stream
			0x0d, 0x00, 0x00, 0x78, // fraction lost 13/256 (5 %), 120 lost in all
			0x00, 0x00, 0x04, 0xd7, // extended highest sequence number 1239
			0x00, 0x00, 0x00, 0x2d, // jitter 45
			0x00, 0x00, 0x00, 0x00, // last SR
			0x00, 0x00, 0x00, 0x00, // delay since last SR
			0x81, 0xcd, 0x00, 0x03, // V=2 FMT=1, PT=205 RTPFB (NACK), length 3 (16 bytes)
			0x00, 0x00, 0x00, 0x07, // sender SSRC 7
			0xca, 0xfe, 0x00, 0x01, // media SSRC
			0x04, 0xd2, 0x00, 0x05, // PID 1234, BLP 0x0005: 1234, 1235 and 1237 lost
			0x8f, 0xce, 0x00, 0x05, // V=2 FMT=15, PT=206 PSFB (REMB), length 5 (24 bytes)
			0x00, 0x00, 0x00, 0x07, // sender SSRC 7
			0x00, 0x00, 0x00, 0x00, // media SSRC 0
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x01, 0x0e, 0xdc, 0x6c, // 1 SSRC; exponent 3, mantissa 187500: 1500000 bit/s
			0xca, 0xfe, 0x00, 0x01, // SSRC
		},
		want: []rtcpWant{
			{Type: 201, Count: 1, Size: 32, Sender: 7,
				Reports: []rtcpReport{{SSRC: 0xcafe0001, Fraction: 13, TotalLost: 120, HighestSeq: 1239, Jitter: 45}}},
			{Type: 205, Count: 1, Size: 16, Sender: 7, Media: 0xcafe0001, Nacks: [][2]uint16{{1234, 5}}},
			{Type: 206, Count: 15, Size: 24, Sender: 7, REMB: 1_500_000, REMBOK: true},
		},
	},
	{
		name: "empty",
		in:   []byte{},
		err:  errRTCPEmpty,
	},
	{
		name: "three bytes",
		in:   []byte{0x80, 0xc9, 0x00},
		err:  errRTCPShortHeader,
	},
	{
		name: "version 1",
		in:   []byte{0x40, 0xc9, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
		err:  errRTCPVersion,
	},
	{
		name: "RTP, not RTCP",
		in:   []byte{0x80, 0x6f, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
		err:  errRTCPType,
	},
	{
		name: "length past the end",
		in: []byte{
			0x80, 0xc9, 0x00, 0x02, // RR, length 2 (12 bytes)
			0x00, 0x00, 0x00, 0x01, // 8 present
		},
		err: errRTCPLength,
	},
	{
		name: "padding count 0",
		in: []byte{
			0xa0, 0xc9, 0x00, 0x02, // V=2 P, RR, length 2
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x00, // count 0
		},
		err: errRTCPZeroPadding,
	},
	{
		name: "padding eats the header",
		in: []byte{
			0xa0, 0xc9, 0x00, 0x01, // V=2 P, RR, length 1 (8 bytes)
			0x00, 0x00, 0x00, 0x05, // count 5 > 8 - 4
		},
		err: errRTCPBigPadding,
	},
	{
		name: "padding eats the SSRC",
		in: []byte{
			0xa0, 0xc9, 0x00, 0x01, // V=2 P, RR, length 1 (8 bytes)
			0x00, 0x00, 0x00, 0x04, // count 4: RR without SSRC
		},
		err: errRTCPReports,
	},
	{
		name: "RR block missing",
		in: []byte{
			0x81, 0xc9, 0x00, 0x01, // V=2 RC=1, RR, length 1
			0x00, 0x00, 0x00, 0x01, // SSRC, no block
		},
		err: errRTCPReports,
	},
	{
		name: "SR without its sender info",
		in: []byte{
			0x80, 0xc8, 0x00, 0x05, // V=2 RC=0, SR, length 5 (24 bytes)
			0xca, 0xfe, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, // 4 bytes short
		},
		err: errRTCPReports,
	},
	{
		name: "APP without its name",
		in: []byte{
			0x80, 0xcc, 0x00, 0x01, // APP, length 1 (8 bytes)
			0x00, 0x00, 0x00, 0x01,
		},
		err: errRTCPShortAPP,
	},
	{
		name: "feedback without media SSRC",
		in: []byte{
			0x8f, 0xcd, 0x00, 0x01, // FMT=15 (TWCC), RTPFB, length 1 (8 bytes)
			0x00, 0x00, 0x00, 0x01,
		},
		err: errRTCPShortFeedback,
	},
	{
		name: "NACK without FCI",
		in: []byte{
			0x81, 0xcd, 0x00, 0x02, // NACK, length 2 (12 bytes)
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x02,
		},
		err: errRTCPNackFCI,
	},
	{
		name: "NACK entry cut by padding",
		in: []byte{
			0xa1, 0xcd, 0x00, 0x03, // V=2 P, NACK, length 3 (16 bytes)
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x64, 0x00, 0x02, // PID 100, then 2 bytes padding
		},
		err: errRTCPNackFCI,
	},
	{
		name: "FIR without FCI",
		in: []byte{
			0x84, 0xce, 0x00, 0x02, // FIR, length 2 (12 bytes)
			0x00, 0x00, 0x00, 0x01,
			0xca, 0xfe, 0x00, 0x01, // a media SSRC, as before RFC 5104, and no entry
		},
		err: errRTCPFIRFCI,
	},
	{
		name: "FIR entry cut short",
		in: []byte{
			0x84, 0xce, 0x00, 0x03, // FIR, length 3 (16 bytes)
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x00,
			0xca, 0xfe, 0x00, 0x01, // SSRC, then no sequence number
		},
		err: errRTCPFIRFCI,
	},
	{
		name: "REMB with one SSRC missing",
		in: []byte{
			0x8f, 0xce, 0x00, 0x05, // REMB, length 5 (24 bytes)
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x00,
			0x52, 0x45, 0x4d, 0x42, // "REMB"
			0x02, 0x0e, 0xdc, 0x6c, // 2 SSRCs
			0xca, 0xfe, 0x00, 0x01, // 1 present
		},
		err: errRTCPREMB,
	},
	{
		name: "REMB without its bitrate",
		in: []byte{
			0x8f, 0xce, 0x00, 0x03, // REMB, length 3 (16 bytes)
			0x00, 0x00, 0x00, 0x01,
			0x00, 0x00, 0x00, 0x00,
			0x52, 0x45, 0x4d, 0x42, // "REMB", nothing more
		},
		err: errRTCPREMB,
	},
	{
		name: "good RR, then garbage",
		in: []byte{
			0x80, 0xc9, 0x00, 0x01, // RR, length 1
			0x00, 0x00, 0x00, 0x01, // SSRC 1
			0x80, 0xc9, 0x00, // 3 bytes
		},
		want: []rtcpWant{{Type: 201, Size: 8, Sender: 1}},
		err:  errRTCPShortHeader,
	},
}

func TestRTCPWalker(t *testing.T) {
	for _, tt := range rtcpWalkTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := rtcpWalkAll(tt.in)
			require.Equal(t, tt.want, got)
			if tt.err == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrRTCPMalformed)
			require.Equal(t, tt.err, err)
		})
	}
}

func TestRTCPWalkerStates(t *testing.T) {
	var w RTCPWalker
	require.False(t, w.Next(), "zero walker: an empty datagram")
	require.ErrorIs(t, w.Err(), ErrRTCPMalformed)

	w.Reset(rtcpWalkTests[0].in)
	require.NoError(t, w.Err(), "Reset forgets the error")
	require.Equal(t, rtcpWant{}, rtcpGot(&w), "nothing before the first Next")
	require.True(t, w.Next())
	require.Equal(t, rtcpWalkTests[0].in, w.Packet())
	require.False(t, w.Next())
	require.NoError(t, w.Err())
	require.Equal(t, rtcpWant{}, rtcpGot(&w), "nothing after the last")
	require.False(t, w.Next(), "and it stays at the end")

	w.Reset(rtcpWalkTests[0].in)
	require.True(t, w.Next())
	require.Panics(t, func() { w.NackPair(2) })
	require.Panics(t, func() { w.NackPair(-1) })
	require.Panics(t, func() { w.ReportBlock(0) })
	require.Panics(t, func() { w.FIREntry(0) })
}

// TestRTCPWalkerAgreesWithPion builds packets with pion/rtcp and requires
// the walker to read what pion reads.
func TestRTCPWalkerAgreesWithPion(t *testing.T) {
	for name, b := range rtcpPionSeeds(t) {
		t.Run(name, func(t *testing.T) {
			n := rtcpComparePion(t, b)
			pkts, err := rtcp.Unmarshal(b)
			require.NoError(t, err)
			require.Equal(t, len(pkts), n, "the walker reads every packet")
		})
	}
	for _, tt := range rtcpWalkTests {
		t.Run("table/"+tt.name, func(t *testing.T) {
			rtcpComparePion(t, tt.in)
		})
	}
}

// rtcpPionSeeds are datagrams built with pion/rtcp.
func rtcpPionSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	crly, err := NewRelayApp(7, &LoudOnset{AudioSSRC: 7, Level: 3})
	require.NoError(t, err)
	report := func(i uint32) rtcp.ReceptionReport {
		return rtcp.ReceptionReport{SSRC: 0xabc0 + i, FractionLost: uint8(i * 40), TotalLost: 1000*i + 7, //nolint:gosec // small
			LastSequenceNumber: 0x10000*i + 99, Jitter: 33 * i, LastSenderReport: i, Delay: 2 * i}
	}
	seeds := map[string][]rtcp.Packet{
		"pion-nack": {&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: 2, Nacks: []rtcp.NackPair{
			{PacketID: 10, LostPackets: 0x0003}, {PacketID: 65535, LostPackets: 0xffff}, {PacketID: 500},
		}}},
		"pion-pli":       {&rtcp.PictureLossIndication{SenderSSRC: 3, MediaSSRC: 4}},
		"pion-fir":       {&rtcp.FullIntraRequest{SenderSSRC: 3, FIR: []rtcp.FIREntry{{SSRC: 4, SequenceNumber: 1}, {SSRC: 5, SequenceNumber: 200}}}},
		"pion-remb":      {&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 5, Bitrate: 2_500_000, SSRCs: []uint32{6, 7}}},
		"pion-remb-tiny": {&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 5, Bitrate: 1}},
		"pion-remb-huge": {&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 5, Bitrate: 1e18}},
		"pion-rr":        {&rtcp.ReceiverReport{SSRC: 8, Reports: []rtcp.ReceptionReport{report(1), report(2)}}},
		"pion-sr": {&rtcp.SenderReport{SSRC: 9, NTPTime: 1 << 40, RTPTime: 90000, PacketCount: 5, OctetCount: 500,
			Reports: []rtcp.ReceptionReport{report(3), report(4), report(5)}}},
		"pion-compound-rr-nack-remb": {
			&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{report(6)}},
			&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: 2, Nacks: []rtcp.NackPair{{PacketID: 7, LostPackets: 1}}},
			&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 800_000, SSRCs: []uint32{2}},
		},
		"pion-compound-sr-sdes-bye": {
			&rtcp.SenderReport{SSRC: 1},
			rtcp.NewCNAMESourceDescription(1, "device@callrelay"),
			&rtcp.Goodbye{Sources: []uint32{1}, Reason: "left"},
		},
		"pion-compound-rr-pli-crly": {
			&rtcp.ReceiverReport{SSRC: 1},
			&rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: 9},
			crly,
		},
	}
	out := map[string][]byte{}
	for name, pkts := range seeds {
		b, err := rtcp.Marshal(pkts)
		require.NoError(t, err, name)
		out[name] = b
	}
	return out
}

// rtcpStricter reports whether err, met on the packet at the front of
// rest, is one of the checks the walker makes and pion/rtcp does not (see
// RTCPWalker): types outside 192..223, the padding count, short feedback
// packets of formats pion reads as raw bytes, and anything in a padded
// packet (pion reads padding as content).
func rtcpStricter(err error, rest []byte) bool {
	switch {
	case errors.Is(err, errRTCPType), errors.Is(err, errRTCPZeroPadding), errors.Is(err, errRTCPBigPadding):
		return true
	case errors.Is(err, errRTCPShortFeedback):
		return true
	}
	return len(rest) > 0 && rest[0]&0x20 != 0
}

// rtcpComparePion walks b, checks the walker's invariants and, when
// pion/rtcp accepts b, that the walker reads every packet pion reads (or
// stops on a check pion does not make) and agrees with pion on the SSRCs,
// NACK entries, PLI, REMB and report blocks of unpadded packets. It returns
// the number of packets walked.
func rtcpComparePion(t testing.TB, b []byte) int {
	t.Helper()
	pkts, perr := rtcp.Unmarshal(b)
	var w RTCPWalker
	w.Reset(b)
	n, off := 0, 0
	for w.Next() {
		p := w.Packet()
		if len(p) < 4 || len(p)%4 != 0 || &p[0] != &b[off] {
			t.Fatalf("packet %d: %d bytes at offset %d", n, len(p), off)
		}
		got := rtcpGot(&w) // runs every accessor over every index
		if perr == nil && p[0]&0x20 == 0 {
			rtcpCompareOne(t, n, &got, pkts[n])
		}
		off += len(p)
		n++
	}
	err := w.Err()
	switch {
	case err == nil && off != len(b):
		t.Fatalf("walk ended at %d of %d bytes without an error", off, len(b))
	case err != nil && !errors.Is(err, ErrRTCPMalformed):
		t.Fatalf("error without the sentinel: %v", err)
	case perr != nil:
	case err == nil && n != len(pkts):
		t.Fatalf("walked %d packets, pion read %d", n, len(pkts))
	case err != nil && !rtcpStricter(err, b[off:]):
		t.Fatalf("pion reads %x but the walker stops at packet %d: %v", b, n, err)
	}
	return n
}

// rtcpCompareOne compares one unpadded packet with pion's reading of it.
func rtcpCompareOne(t testing.TB, i int, got *rtcpWant, p rtcp.Packet) {
	t.Helper()
	fail := func(what string, w, g any) {
		t.Helper()
		t.Fatalf("packet %d (%T): %s: pion %v, walker %v", i, p, what, w, g)
	}
	reports := func(rs []rtcp.ReceptionReport) {
		if len(rs) != len(got.Reports) {
			fail("report blocks", len(rs), len(got.Reports))
		}
		for j, r := range rs {
			want := rtcpReport{SSRC: r.SSRC, Fraction: r.FractionLost, TotalLost: r.TotalLost, HighestSeq: r.LastSequenceNumber, Jitter: r.Jitter}
			if want != got.Reports[j] {
				fail(fmt.Sprintf("report block %d", j), want, got.Reports[j])
			}
		}
	}
	switch p := p.(type) {
	case *rtcp.TransportLayerNack:
		if p.SenderSSRC != got.Sender || p.MediaSSRC != got.Media {
			fail("SSRCs", [2]uint32{p.SenderSSRC, p.MediaSSRC}, [2]uint32{got.Sender, got.Media})
		}
		if len(p.Nacks) != len(got.Nacks) {
			fail("NACK entries", len(p.Nacks), len(got.Nacks))
		}
		for j, pair := range p.Nacks {
			if [2]uint16{pair.PacketID, uint16(pair.LostPackets)} != got.Nacks[j] {
				fail(fmt.Sprintf("NACK entry %d", j), pair, got.Nacks[j])
			}
			if want, exp := pair.PacketList(), rtcpExpandNack(got.Nacks[j][0], got.Nacks[j][1]); !slices.Equal(want, exp) {
				fail(fmt.Sprintf("NACK entry %d expanded", j), want, exp)
			}
		}
	case *rtcp.PictureLossIndication:
		if !got.PLI || p.SenderSSRC != got.Sender || p.MediaSSRC != got.Media {
			fail("PLI", p, got)
		}
	case *rtcp.FullIntraRequest:
		if p.SenderSSRC != got.Sender || p.MediaSSRC != got.Media || len(p.FIR) != len(got.FIRs) {
			fail("FIR", p, got)
		}
		for j, e := range p.FIR {
			if [2]uint32{e.SSRC, uint32(e.SequenceNumber)} != got.FIRs[j] {
				fail(fmt.Sprintf("FIR entry %d", j), e, got.FIRs[j])
			}
		}
	case *rtcp.ReceiverEstimatedMaximumBitrate:
		if !got.REMBOK || p.SenderSSRC != got.Sender {
			fail("REMB", p, got)
		}
		// pion decodes a zero mantissa as 2^(exponent+23), not 0: compare
		// only non-zero estimates.
		if got.REMB != 0 && got.REMB != math.MaxUint64 && float64(p.Bitrate) != float64(got.REMB) {
			fail("REMB bitrate", p.Bitrate, got.REMB)
		}
		if got.REMB == math.MaxUint64 && float64(p.Bitrate) < math.Exp2(64) {
			fail("REMB saturated", p.Bitrate, got.REMB)
		}
	case *rtcp.ReceiverReport:
		if p.SSRC != got.Sender {
			fail("SSRC", p.SSRC, got.Sender)
		}
		reports(p.Reports)
	case *rtcp.SenderReport:
		if p.SSRC != got.Sender {
			fail("SSRC", p.SSRC, got.Sender)
		}
		reports(p.Reports)
	case *rtcp.ApplicationDefined:
		if p.SSRC != got.Sender || p.SubType != got.Count || got.RelayApp != (p.Name == RelayAppName) {
			fail("APP", p, got)
		}
	}
}

// rtcpExpandNack lists the sequence numbers a NACK entry reports lost, as
// README.md section 5.9 says: pid, then pid+1+i for each set bit i of blp.
func rtcpExpandNack(pid, blp uint16) []uint16 {
	seqs := []uint16{pid}
	for i := range 16 {
		if blp&(1<<i) != 0 {
			seqs = append(seqs, pid+1+uint16(i))
		}
	}
	return seqs
}

func TestRTCPExpandNack(t *testing.T) {
	require.Equal(t, []uint16{1234, 1235, 1237}, rtcpExpandNack(1234, 0x0005))
	require.Equal(t, []uint16{0xffff, 0x000f}, rtcpExpandNack(0xffff, 0x8000), "wraps")
}

// TestRTCPWalkerAllocs: walking a compound RR + NACK + REMB and reading
// everything, and rejecting malformed datagrams, allocates nothing.
func TestRTCPWalkerAllocs(t *testing.T) {
	good := rtcpPionSeeds(t)["pion-compound-rr-nack-remb"]
	var bad [][]byte
	for _, tt := range rtcpWalkTests {
		if tt.err != nil {
			bad = append(bad, tt.in)
		}
	}
	var w RTCPWalker
	var sink uint64
	allocs := testing.AllocsPerRun(100, func() {
		w.Reset(good)
		for w.Next() {
			sink += uint64(w.Type()) + uint64(w.Count()) + uint64(len(w.Packet())) + uint64(w.SenderSSRC()) + uint64(w.MediaSSRC())
			for i := range w.NackPairs() {
				pid, blp := w.NackPair(i)
				sink += uint64(pid) + uint64(blp)
			}
			for i := range w.FIREntries() {
				ssrc, seq := w.FIREntry(i)
				sink += uint64(ssrc) + uint64(seq)
			}
			for i := range w.ReportBlocks() {
				ssrc, frac, lost, seq, jitter := w.ReportBlock(i)
				sink += uint64(ssrc) + uint64(frac) + uint64(lost) + uint64(seq) + uint64(jitter)
			}
			if bps, ok := w.REMB(); ok {
				sink += bps
			}
			if w.IsPLI() || w.IsRelayApp() {
				sink++
			}
		}
		if w.Err() != nil {
			panic(w.Err())
		}
		for _, b := range bad {
			w.Reset(b)
			for w.Next() {
				sink++
			}
			if w.Err() == nil {
				panic("accepted")
			}
		}
	})
	require.Zero(t, allocs, "the walker must not allocate, not even on bad input")
	_ = sink
}

func BenchmarkRTCPWalk(b *testing.B) {
	pkt := rtcpPionSeeds(b)["pion-compound-rr-nack-remb"]
	var w RTCPWalker
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		w.Reset(pkt)
		for w.Next() {
			for i := range w.NackPairs() {
				w.NackPair(i)
			}
			w.REMB()
		}
		if w.Err() != nil {
			b.Fatal(w.Err())
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}

// rtcpWalkSeeds are the committed seeds of FuzzRTCPWalk (see
// TestMediaFuzzSeeds): the table's datagrams and pion-built ones.
func rtcpWalkSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	seeds := rtcpPionSeeds(t)
	for _, tt := range rtcpWalkTests {
		seeds[mediaSeedName(tt.name)] = tt.in
	}
	return seeds
}

// FuzzRTCPWalk: the walker never panics, its packets tile the datagram
// when it reports no error, it fails only with ErrRTCPMalformed, and when
// pion/rtcp accepts the datagram the two agree (rtcpComparePion).
func FuzzRTCPWalk(f *testing.F) {
	for _, b := range rtcpWalkSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rtcpComparePion(t, b)
	})
}
