package protocol

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
)

func TestRTPHeaderFieldsMarshal(t *testing.T) {
	tests := []struct {
		name string
		in   RTPHeaderFields
		want []byte
	}{
		{
			name: "no extension",
			in:   RTPHeaderFields{PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3},
			want: []byte{
				0x80, 0x60, 0x00, 0x01, // V=2, PT=96, seq 1
				0x00, 0x00, 0x00, 0x02, // timestamp 2
				0x00, 0x00, 0x00, 0x03, // SSRC 3
			},
		},
		{
			name: "audio level",
			in: RTPHeaderFields{
				PayloadType: 111, SequenceNumber: 0x1234, Timestamp: 960, SSRC: 0xdeadbeef,
				Extensions: [MaxRTPExtensions]RTPExtension{{ID: 1, Data: []byte{AudioLevelByte(true, 30)}}},
			},
			want: []byte{
				0x90, 0x6f, 0x12, 0x34, // V=2 X, PT=111
				0x00, 0x00, 0x03, 0xc0, // timestamp 960
				0xde, 0xad, 0xbe, 0xef, // SSRC
				0xbe, 0xde, 0x00, 0x01, // profile 0xBEDE, 1 word
				0x10, 0x9e, 0x00, 0x00, // id 1 len 0: V=1 level 30; padding
			},
		},
		{
			name: "marker, slots with a gap, exact word",
			in: RTPHeaderFields{
				Marker: true, PayloadType: 127, SequenceNumber: 0xffff, Timestamp: 0xffffffff, SSRC: 1,
				Extensions: [MaxRTPExtensions]RTPExtension{
					{ID: 3, Data: []byte{0xaa, 0xbb}},
					{},
					{ID: 14, Data: []byte{0x01, 0x02, 0x03}},
				},
			},
			want: []byte{
				0x90, 0xff, 0xff, 0xff, // V=2 X, M=1 PT=127, seq 65535
				0xff, 0xff, 0xff, 0xff, // timestamp
				0x00, 0x00, 0x00, 0x01, // SSRC
				0xbe, 0xde, 0x00, 0x02, // profile 0xBEDE, 2 words
				0x31, 0xaa, 0xbb, // id 3 len 1 (2 bytes)
				0xe2, 0x01, 0x02, 0x03, // id 14 len 2 (3 bytes)
				0x00, // padding
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, len(tt.want), tt.in.MarshalSize())
			buf := bytes.Repeat([]byte{0xee}, 64) // stale bytes must not leak
			n, err := tt.in.MarshalTo(buf)
			require.NoError(t, err)
			require.Equal(t, tt.want, buf[:n])

			var h RTPHeader
			require.NoError(t, h.Parse(buf[:n]))
			require.Equal(t, tt.in.Marker, h.Marker)
			require.Equal(t, tt.in.PayloadType, h.PayloadType)
			require.Equal(t, tt.in.SequenceNumber, h.SequenceNumber)
			require.Equal(t, tt.in.Timestamp, h.Timestamp)
			require.Equal(t, tt.in.SSRC, h.SSRC)
			var p rtp.Packet
			require.NoError(t, p.Unmarshal(buf[:n]))
			for _, e := range tt.in.Extensions {
				if e.ID == 0 {
					continue
				}
				got, ok := h.ExtensionByID(e.ID)
				require.True(t, ok)
				require.Equal(t, e.Data, got)
				require.Equal(t, e.Data, p.GetExtension(e.ID))
			}
		})
	}
}

func TestRTPHeaderFieldsErrors(t *testing.T) {
	one := []byte{1}
	tests := []struct {
		name string
		in   RTPHeaderFields
		buf  int
		err  error
	}{
		{"payload type 128", RTPHeaderFields{PayloadType: 128}, 64, ErrRTPPayloadType},
		{"id 15", RTPHeaderFields{Extensions: [MaxRTPExtensions]RTPExtension{{ID: 15, Data: one}}}, 64, ErrRTPExtensionID},
		{
			"repeated id",
			RTPHeaderFields{Extensions: [MaxRTPExtensions]RTPExtension{{ID: 2, Data: one}, {ID: 2, Data: one}}},
			64, ErrRTPExtensionID,
		},
		{"empty data", RTPHeaderFields{Extensions: [MaxRTPExtensions]RTPExtension{{ID: 1}}}, 64, ErrRTPExtensionSize},
		{
			"17 bytes",
			RTPHeaderFields{Extensions: [MaxRTPExtensions]RTPExtension{{ID: 1, Data: make([]byte, 17)}}},
			64, ErrRTPExtensionSize,
		},
		{"short buffer", RTPHeaderFields{}, 11, ErrRTPShortBuffer},
		{
			"short buffer for the extension",
			RTPHeaderFields{Extensions: [MaxRTPExtensions]RTPExtension{{ID: 1, Data: one}}},
			19, ErrRTPShortBuffer,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.in.MarshalTo(make([]byte, tt.buf))
			require.ErrorIs(t, err, tt.err)
			require.Zero(t, n)
		})
	}
}

func TestRTPHeaderFieldsAllocs(t *testing.T) {
	f := RTPHeaderFields{
		PayloadType: 111, SSRC: 9,
		Extensions: [MaxRTPExtensions]RTPExtension{{ID: 1, Data: []byte{0x9e}}, {ID: 2, Data: []byte{1, 2}}},
	}
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(100, func() {
		f.SequenceNumber++
		if _, err := f.MarshalTo(buf); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
}
