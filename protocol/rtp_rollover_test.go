package protocol

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRolloverCounterEncoding(t *testing.T) {
	for _, tt := range []struct {
		roc  uint32
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{0xff, []byte{0xff}},
		{0x100, []byte{0x01, 0x00}}, // 256 rollovers: a second byte
		{0xffff, []byte{0xff, 0xff}},
		{0x10000, []byte{0x01, 0x00, 0x00}},
		{0xffffff, []byte{0xff, 0xff, 0xff}},
		{0x1000000, []byte{0x01, 0x00, 0x00, 0x00}},
		{0xffffffff, []byte{0xff, 0xff, 0xff, 0xff}},
	} {
		got := AppendRolloverCounter(nil, tt.roc)
		require.Equal(t, tt.want, got, "roc %#x", tt.roc)
		require.Len(t, got, RolloverCounterLen(tt.roc))
		back, ok := ParseRolloverCounter(got)
		require.True(t, ok)
		require.Equal(t, tt.roc, back)
	}
	require.Equal(t, []byte{0xaa, 0x01, 0x00}, AppendRolloverCounter([]byte{0xaa}, 0x100), "appends")
}

func TestParseRolloverCounter(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		want uint32
		ok   bool
	}{
		{"one byte", []byte{0x07}, 7, true},
		{"leading zeros are accepted", []byte{0x00, 0x00, 0x00, 0x07}, 7, true},
		{"two bytes", []byte{0x12, 0x34}, 0x1234, true},
		{"three bytes", []byte{0x12, 0x34, 0x56}, 0x123456, true},
		{"four bytes", []byte{0x12, 0x34, 0x56, 0x78}, 0x12345678, true},
		{"empty", []byte{}, 0, false},
		{"nil", nil, 0, false},
		{"five bytes", []byte{0, 0, 0, 0, 1}, 0, false},
	} {
		got, ok := ParseRolloverCounter(tt.in)
		require.Equal(t, tt.ok, ok, tt.name)
		require.Equal(t, tt.want, got, tt.name)
	}
}

// rolloverExample is the audio packet of protocol/README.md section 4
// ("Rollover counter"), its payload left out: sequence 10 after the first
// rollover, so ROC 1.
var rolloverExample = []byte{
	0x90, 0x6f, 0x00, 0x0a, // V=2 X=1, PT=111, sequence 10
	0x00, 0x00, 0x03, 0xc0, // timestamp 960
	0xde, 0xad, 0xbe, 0xef, // SSRC
	0xbe, 0xde, 0x00, 0x02, // one-byte extensions, 2 words
	0x10, 0x9e, // id 1 len 0: audio level V=1 level 30
	0x40, 0x01, // id 4 len 0: ROC 1
	0x32, 0x2a, 0x00, 0x00, // id 3 len 2: abs-send-time 10.5 s
}

// The README's example is what RTPHeaderFields writes, and RolloverCounter
// reads it back; other ids find no ROC.
func TestRolloverCounterExample(t *testing.T) {
	abs := AbsSendTimeBytes(0x2a0000)
	f := RTPHeaderFields{PayloadType: 111, SequenceNumber: 10, Timestamp: 960, SSRC: 0xdeadbeef,
		Extensions: [MaxRTPExtensions]RTPExtension{
			{ID: DefaultAudioLevelExtensionID, Data: []byte{AudioLevelByte(true, 30)}},
			{ID: DefaultRolloverCounterExtensionID, Data: AppendRolloverCounter(nil, 1)},
			{ID: DefaultAbsSendTimeExtensionID, Data: abs[:]},
		}}
	buf := make([]byte, f.MarshalSize())
	n, err := f.MarshalTo(buf)
	require.NoError(t, err)
	require.Equal(t, rolloverExample, buf[:n])

	var h RTPHeader
	require.NoError(t, h.Parse(rolloverExample))
	roc, ok := h.RolloverCounter(DefaultRolloverCounterExtensionID)
	require.True(t, ok)
	require.Equal(t, uint32(1), roc)
	for _, id := range []uint8{0, 2, 5, 15} {
		_, ok := h.RolloverCounter(id)
		require.False(t, ok, "id %d", id)
	}
	// The audio level's element is one byte too: under its id it would
	// read as a ROC, which is why the ids must differ.
	roc, ok = h.RolloverCounter(DefaultAudioLevelExtensionID)
	require.True(t, ok)
	require.Equal(t, uint32(0x9e), roc)
	// Three bytes of abs-send-time also parse: a ROC is recognised by its
	// negotiated id only.
	_, ok = h.RolloverCounter(DefaultAbsSendTimeExtensionID)
	require.True(t, ok)
}

func TestRolloverCounterAllocs(t *testing.T) {
	var h RTPHeader
	require.NoError(t, h.Parse(rolloverExample))
	buf := make([]byte, 0, MaxRolloverCounterLen)
	var sink uint32
	allocs := testing.AllocsPerRun(1000, func() {
		buf = AppendRolloverCounter(buf[:0], 0xabcdef)
		v, _ := h.RolloverCounter(DefaultRolloverCounterExtensionID)
		sink += v
	})
	require.Zero(t, allocs)
	require.NotZero(t, sink)
}

// rolloverSeeds are the committed seed corpus of FuzzRolloverCounter.
func rolloverSeeds() map[string][]byte {
	return map[string][]byte{
		"empty":        {},
		"roc-0":        {0x00},
		"roc-1":        {0x01},
		"roc-256":      {0x01, 0x00},
		"roc-65536":    {0x01, 0x00, 0x00},
		"roc-max":      {0xff, 0xff, 0xff, 0xff},
		"leading-zero": {0x00, 0x00, 0x01},
		"five-bytes":   {0x01, 0x02, 0x03, 0x04, 0x05},
	}
}

// TestRolloverCounterFuzzSeeds keeps testdata/fuzz/FuzzRolloverCounter
// equal to rolloverSeeds (CALLRELAY_WRITE_FUZZ_SEEDS=1 rewrites it).
func TestRolloverCounterFuzzSeeds(t *testing.T) {
	checkFuzzSeeds(t, map[string]map[string][]byte{"FuzzRolloverCounter": rolloverSeeds()}, true)
}

// Whatever the element's data, ParseRolloverCounter accepts exactly 1..4
// bytes, its value re-encodes to the same bytes less leading zeros, and
// the element read from a real header says the same.
func FuzzRolloverCounter(f *testing.F) {
	for _, s := range rolloverSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d []byte) {
		roc, ok := ParseRolloverCounter(d)
		if ok != (len(d) >= 1 && len(d) <= MaxRolloverCounterLen) {
			t.Fatalf("ok %v for %d bytes", ok, len(d))
		}
		if ok {
			trimmed := bytes.TrimLeft(d, "\x00")
			if len(trimmed) == 0 {
				trimmed = []byte{0}
			}
			if enc := AppendRolloverCounter(nil, roc); !bytes.Equal(enc, trimmed) {
				t.Fatalf("%x parsed as %#x re-encodes as %x", d, roc, enc)
			}
		}
		if len(d) < 1 || len(d) > 16 {
			return // not a one-byte element
		}
		fields := RTPHeaderFields{PayloadType: 111, SequenceNumber: 1, SSRC: 2,
			Extensions: [MaxRTPExtensions]RTPExtension{{ID: DefaultRolloverCounterExtensionID, Data: d}}}
		pkt := make([]byte, fields.MarshalSize())
		if _, err := fields.MarshalTo(pkt); err != nil {
			t.Fatal(err)
		}
		var h RTPHeader
		if err := h.Parse(pkt); err != nil {
			t.Fatal(err)
		}
		got, gotOK := h.RolloverCounter(DefaultRolloverCounterExtensionID)
		if got != roc || gotOK != ok {
			t.Fatalf("in a header: %#x %v, alone: %#x %v", got, gotOK, roc, ok)
		}
	})
}

// rtpCheckRolloverCounter checks, for a parsed packet, that
// RolloverCounter agrees with the raw element under every id.
func rtpCheckRolloverCounter(t *testing.T, h *RTPHeader) {
	t.Helper()
	for id := range 256 {
		v, ok := h.RolloverCounter(uint8(id))
		d, found := h.ExtensionByID(uint8(id))
		want, wantOK := ParseRolloverCounter(d)
		if ok != (found && wantOK) || v != want {
			t.Fatalf("id %d: %#x %v for %x", id, v, ok, d)
		}
	}
}
