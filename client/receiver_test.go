package client

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// rocSender returns an audio Sender whose next packet has sequence number
// seq and rollover counter roc, as if it had been sending for a while.
func rocSender(t testing.TB, key MediaKey, seq uint16, roc uint32) *Sender {
	t.Helper()
	s, err := NewSender(SenderConfig{SSRC: 0x5150, PayloadType: 111, Key: key, FirstSequence: seq})
	require.NoError(t, err)
	s.roc = roc
	return s
}

// sealN seals n packets, each with its index in the payload.
func sealN(t testing.TB, s *Sender, n int) [][]byte {
	t.Helper()
	out := make([][]byte, n)
	for i := range out {
		pkt, err := s.Seal(nil, Sample{Payload: []byte{byte(i), 0xee}, Timestamp: uint32(960 * i)})
		require.NoError(t, err)
		out[i] = pkt
	}
	return out
}

// hintOf reads the packet's rollover counter element (default id).
func hintOf(t testing.TB, pkt []byte) (seq uint16, roc uint32) {
	t.Helper()
	var h protocol.RTPHeader
	require.NoError(t, h.Parse(pkt))
	roc, ok := h.RolloverCounter(protocol.DefaultRolloverCounterExtensionID)
	require.True(t, ok, "every packet carries its ROC")
	return h.SequenceNumber, roc
}

func receiverFor(t testing.TB, key MediaKey) *Receiver {
	t.Helper()
	r := NewReceiver()
	require.NoError(t, r.AddSender(0x5150, key))
	return r
}

// openAll requires every packet to decrypt to what sealN put in it.
func openAll(t testing.TB, r *Receiver, pkts [][]byte, from int) {
	t.Helper()
	for i, pkt := range pkts {
		got, err := r.Open(nil, pkt, nil)
		require.NoError(t, err, "packet %d", from+i)
		require.Equal(t, []byte{byte(from + i), 0xee}, got, "packet %d", from+i)
	}
}

// The Sender counts rollovers itself, encrypts with that ROC and carries
// it on every packet; pion's context agrees.
func TestSenderCarriesROC(t *testing.T) {
	s := rocSender(t, NewMediaKey(), 65533, 0)
	var got [][2]uint32
	for range 6 {
		pkt := sealN(t, s, 1)[0]
		seq, roc := hintOf(t, pkt)
		got = append(got, [2]uint32{uint32(seq), roc})
		pionROC, ok := s.ctx.ROC(s.hdr.SSRC)
		require.True(t, ok)
		require.Equal(t, roc, pionROC, "encrypted with the ROC it carries")
	}
	require.Equal(t, [][2]uint32{{65533, 0}, {65534, 0}, {65535, 0}, {0, 1}, {1, 1}, {2, 1}}, got)
}

// The element grows a byte at 256, 65536 and 2^24 rollovers (the header
// by a word, or not, as padding allows), and receivers joining right
// there decrypt.
func TestSenderROCGrowsAByte(t *testing.T) {
	for _, tc := range []struct {
		from    uint32
		before  []byte
		after   []byte
		growBy4 bool
	}{
		{255, []byte{0xff}, []byte{0x01, 0x00}, true},        // level 2 + roc 3 = 5: a second word
		{0xffff, []byte{0xff, 0xff}, []byte{1, 0, 0}, false}, // 5 -> 6: fits the padding
		{0xffffff, []byte{0xff, 0xff, 0xff}, []byte{1, 0, 0, 0}, false},
	} {
		key := NewMediaKey()
		s := rocSender(t, key, 65535, tc.from)
		pkts := sealN(t, s, 2)
		var h0, h1 protocol.RTPHeader
		require.NoError(t, h0.Parse(pkts[0]))
		require.NoError(t, h1.Parse(pkts[1]))
		d0, _ := h0.ExtensionByID(protocol.DefaultRolloverCounterExtensionID)
		d1, _ := h1.ExtensionByID(protocol.DefaultRolloverCounterExtensionID)
		require.Equal(t, tc.before, d0, "roc %#x", tc.from)
		require.Equal(t, tc.after, d1, "roc %#x", tc.from+1)
		if tc.growBy4 {
			require.Equal(t, h0.HeaderLen+4, h1.HeaderLen)
		} else {
			require.Equal(t, h0.HeaderLen, h1.HeaderLen)
		}
		for i := range pkts {
			r := receiverFor(t, key)
			openAll(t, r, pkts[i:], i)
			require.Equal(t, uint64(1), r.Stats().FirstROC)
		}
	}
}

// A receiver that joins 10 packets after a rollover decrypts from its
// first packet on; one that does not read the hint (another id) cannot,
// for good: the failure this extension exists for.
func TestReceiverJoinsAfterRollover(t *testing.T) {
	key := NewMediaKey()
	pkts := sealN(t, rocSender(t, key, 65526, 0), 60) // seq 0 is packet 10, ROC 1 from there
	seq, roc := hintOf(t, pkts[20])
	require.Equal(t, uint16(10), seq)
	require.Equal(t, uint32(1), roc)

	r := receiverFor(t, key)
	openAll(t, r, pkts[20:], 20)
	require.Equal(t, ReceiverStats{FirstROC: 1}, r.Stats(), "one hint, then the estimate")

	blind, err := NewReceiverWithConfig(ReceiverConfig{ROCID: 9})
	require.NoError(t, err)
	require.NoError(t, blind.AddSender(0x5150, key))
	for _, pkt := range pkts[20:] {
		_, err := blind.Open(nil, pkt, nil)
		require.ErrorIs(t, err, ErrDecrypt)
	}

	// Joined before the rollover: the estimate carries it across.
	r = receiverFor(t, key)
	openAll(t, r, pkts[5:], 5)
	require.Equal(t, ReceiverStats{}, r.Stats())
}

// Packets reordered around the wrap, and NACK retransmissions from before
// it, decrypt with the estimate alone.
func TestReceiverWrapReordering(t *testing.T) {
	key := NewMediaKey()
	pkts := sealN(t, rocSender(t, key, 65530, 4), 12) // seq 65530..65535 (ROC 4), 0..5 (ROC 5)
	r := receiverFor(t, key)
	for _, i := range []int{0, 1, 2, 4, 6, 3, 7, 5, 9, 8, 11, 10} {
		got, err := r.Open(nil, pkts[i], nil)
		require.NoError(t, err, "packet %d", i)
		require.Equal(t, byte(i), got[0])
	}
	require.Equal(t, ReceiverStats{FirstROC: 1}, r.Stats(), "no hint needed after the first packet")
	for _, i := range []int{3, 6} {
		_, err := r.Open(nil, pkts[i], nil)
		require.ErrorIs(t, err, ErrDecrypt, "replayed packet %d", i)
	}
}

func TestEstimateROC(t *testing.T) {
	idx := func(roc uint32, seq uint16) uint64 { return uint64(roc)<<16 | uint64(seq) }
	for _, tc := range []struct {
		name string
		top  uint64
		seq  uint16
		want uint32
	}{
		{"next packet", idx(3, 100), 101, 3},
		{"same packet", idx(3, 100), 100, 3},
		{"just before", idx(3, 100), 99, 3},
		{"wrapped forward", idx(3, 65535), 0, 4},
		{"late, from before the wrap", idx(3, 0), 65535, 2},
		{"half a cycle ahead is still this cycle", idx(3, 100), 100 + 32768, 3},
		{"past half a cycle ahead is the cycle before", idx(3, 100), 100 + 32769, 2},
		{"never before ROC 0", idx(0, 100), 100 + 32769, 0},
		{"top high: far below wraps forward", idx(3, 40000), 40000 - 32769, 4},
		{"top high: half a cycle below is this cycle", idx(3, 40000), 40000 - 32768, 3},
		{"top at the middle", idx(3, 32768), 0, 3},
		{"top at the middle, seq top", idx(3, 32768), 65535, 3},
		{"top just past the middle, seq 0", idx(3, 32769), 0, 4},
		{"the last ROC wraps to 0", idx(0xffffffff, 65535), 0, 0},
	} {
		require.Equal(t, tc.want, estimateROC(tc.top, tc.seq), tc.name)
	}
}

// A receiver that stopped getting a stream for more than half a cycle (a
// simulcast layer it switched away from and back to) is wrong by a ROC or
// more: the hint puts it right at once, and the estimate carries on.
func TestReceiverResumesAfterLongGap(t *testing.T) {
	key := NewMediaKey()
	s := rocSender(t, key, 65000, 0)
	r := receiverFor(t, key)
	openAll(t, r, sealN(t, s, 5), 0)
	for _, gap := range []struct {
		seq uint16
		roc uint32
	}{{40000, 1}, {100, 3}, {65535, 3}, {3, 200}} {
		s.hdr.SequenceNumber, s.roc = gap.seq, gap.roc // the packets in between went elsewhere
		before := r.Stats().ROCFromHint
		openAll(t, r, sealN(t, s, 5), 0)
		require.Equal(t, before+1, r.Stats().ROCFromHint, "jump to %d/%d", gap.roc, gap.seq)
	}
	require.Zero(t, r.Stats().ROCHintsRejected)
}

// forgeHint returns a copy of pkt whose rollover counter element says roc
// (same length): what an attacker on the path, or the relay, could do.
func forgeHint(t testing.TB, pkt []byte, roc byte) []byte {
	t.Helper()
	out := bytes.Clone(pkt)
	var h protocol.RTPHeader
	require.NoError(t, h.Parse(out))
	d, ok := h.ExtensionByID(protocol.DefaultRolloverCounterExtensionID)
	require.True(t, ok)
	require.Len(t, d, 1)
	d[0] = roc
	return out
}

// A forged ROC hint fails authentication under both candidates and
// changes nothing: the stream in sync stays in sync, the genuine packet
// it was forged from still decrypts (it was not marked as seen).
func TestReceiverForgedHint(t *testing.T) {
	key := NewMediaKey()
	pkts := sealN(t, rocSender(t, key, 65530, 0), 20) // ROC 1 from packet 6
	r := receiverFor(t, key)
	openAll(t, r, pkts[:8], 0)
	for _, roc := range []byte{0, 2, 7, 0xff} {
		_, err := r.Open(nil, forgeHint(t, pkts[8], roc), nil)
		require.ErrorIs(t, err, ErrDecrypt, "hint %d", roc)
	}
	require.Equal(t, uint64(4), r.Stats().ROCHintsRejected, "each tried with the estimate (1), then the hint")
	openAll(t, r, pkts[8:], 8)
	require.Zero(t, r.Stats().ROCFromHint)

	_, err := r.Open(nil, pkts[19], nil)
	require.ErrorIs(t, err, ErrDecrypt, "already seen")

	// A genuine packet from cycles ago replayed, with its own authentic
	// old ROC: the estimate is wrong for it, its hint right, and the
	// replay window refuses it all the same.
	later := rocSender(t, key, 500, 3)
	openAll(t, r, sealN(t, later, 3), 0)
	rejected := r.Stats().ROCHintsRejected
	_, err = r.Open(nil, pkts[2], nil)
	require.ErrorIs(t, err, ErrDecrypt)
	require.Equal(t, rejected+1, r.Stats().ROCHintsRejected)
	openAll(t, r, sealN(t, later, 3), 0)

	// Forged first packets of a fresh receiver: they fail, the genuine
	// packet after them syncs it.
	fresh := receiverFor(t, key)
	for _, roc := range []byte{0, 2, 9} {
		_, err := fresh.Open(nil, forgeHint(t, pkts[10], roc), nil)
		require.ErrorIs(t, err, ErrDecrypt)
	}
	openAll(t, fresh, pkts[10:], 10)
	require.Equal(t, uint64(1), fresh.Stats().FirstROC)

	// A hint stripped to another length, or to another id, breaks the
	// header's authentication all the same.
	short := bytes.Clone(pkts[11])
	short[18] = 0x90 | short[18]&0x0f // id 4 -> id 9: no hint at all
	_, err = receiverFor(t, key).Open(nil, short, nil)
	require.ErrorIs(t, err, ErrDecrypt)
}

// Sealing and opening a packet of a stream in sync allocate nothing, on
// either side of a rollover.
func TestSealOpenAllocs(t *testing.T) {
	key := NewMediaKey()
	s := rocSender(t, key, 65000, 7)
	r := receiverFor(t, key)
	require.NoError(t, s.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, t0))
	payload := make([]byte, 160)
	out := make([]byte, 0, 256)
	plain := make([]byte, 0, 256)
	var hdr rtp.Header
	roundTrip := func() {
		pkt, err := s.Seal(out, Sample{Payload: payload, AudioLevel: AudioLevel{Level: 30}})
		if err != nil {
			panic(err)
		}
		if _, err := r.Open(plain, pkt, &hdr); err != nil {
			panic(err)
		}
	}
	allocs := testing.AllocsPerRun(1000, roundTrip) // crosses seq 0 on the way
	if raceEnabled {
		// pion/srtp takes a scratch buffer from a sync.Pool per packet, which
		// -race empties at random: only the plain build measures ours.
		require.LessOrEqual(t, allocs, 4.0)
	} else {
		require.Zero(t, allocs)
	}
	require.Equal(t, uint32(8), s.roc)
	require.Equal(t, ReceiverStats{FirstROC: 1}, r.Stats())
}

func TestReceiverConfig(t *testing.T) {
	_, err := NewReceiverWithConfig(ReceiverConfig{ROCID: 15})
	require.ErrorIs(t, err, ErrConfig)
	r, err := NewReceiverWithConfig(ReceiverConfig{ROCID: 9})
	require.NoError(t, err)
	require.Equal(t, uint8(9), r.rocID)

	// Sender and receiver agreeing on another id.
	key := NewMediaKey()
	s, err := NewSender(SenderConfig{SSRC: 0x5150, PayloadType: 111, Key: key, ROCID: 9, FirstSequence: 65535})
	require.NoError(t, err)
	s.roc = 3
	require.NoError(t, r.AddSender(0x5150, key))
	pkt, err := s.Seal(nil, Sample{Payload: []byte{0, 0xee}})
	require.NoError(t, err)
	_, err = r.Open(nil, pkt, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1), r.Stats().FirstROC)

	// The ROC's id is not free for other extensions.
	require.Error(t, s.SetAbsSendTime(9, t0))
	var h protocol.RTPHeader
	require.NoError(t, h.Parse(pkt))
	d, _ := h.ExtensionByID(9)
	require.Equal(t, []byte{3}, d)
	require.Equal(t, uint16(0xffff), binary.BigEndian.Uint16(pkt[2:4]))
}

// Every layer of a VideoSender carries its own ROC: three layers started
// near the end of the sequence space all roll over, and a receiver that
// takes each layer only from its 10th packet after the rollover (a late
// joiner, or a layer switch) decrypts it, key frame or not.
func TestVideoSenderLayersCarryROC(t *testing.T) {
	key := NewMediaKey()
	v, sink := newTestVideo(t, VideoConfig{Key: key, FirstSequence: 65500})
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 3},
		&protocol.TargetBitrate{Total: 2_000_000, LayerCount: 3, Layers: [3]uint32{150_000, 400_000, 1_200_000}})))
	pkts := drive(v, sink, t0, 4*time.Second)
	ssrcs := v.SSRCs()
	r := NewReceiver()
	for _, s := range ssrcs {
		require.NoError(t, r.AddSender(s, key))
	}
	wrapped := map[uint32]bool{}
	opened := map[uint32]int{}
	for _, p := range pkts {
		seq, roc := hintOf(t, p.raw)
		require.Equal(t, seq < 65500, roc == 1, "SSRC %#x seq %d: ROC %d", p.ssrc, seq, roc)
		if roc == 1 && seq >= 10 {
			wrapped[p.ssrc] = true
			plain, err := r.Open(nil, p.raw, nil)
			require.NoError(t, err, "SSRC %#x seq %d", p.ssrc, seq)
			layer, _, _, _, ok := VideoPayloadInfo(plain)
			require.True(t, ok)
			require.Equal(t, ssrcs[layer], p.ssrc)
			opened[p.ssrc]++
		}
	}
	require.Len(t, wrapped, 3, "every layer rolled over")
	require.Equal(t, ReceiverStats{FirstROC: 3}, r.Stats(), "one hint per layer, then the estimate")
	for _, s := range ssrcs {
		require.Positive(t, opened[s])
	}
}

// specVector is the rollover counter example of protocol/README.md
// section 4: master key 00..0f, salt a0..ad, ROC 1, sequence 10, "hello".
const specVector = "906f000a000003c0deadbeef" + // V=2 X=1 PT=111 seq 10, timestamp 960, SSRC
	"bede0002" + "109e" + "4001" + "322a0000" + // level V=1 30, ROC 1, abs-send-time 10.5 s
	"da9842d994" + // "hello", encrypted
	"31f2e919b3e0e5e1b561" // auth tag

// The Sender writes the README's test vector byte for byte, and a fresh
// Receiver opens it from its hint; one that assumes ROC 0 cannot.
func TestRolloverSpecVector(t *testing.T) {
	want, err := hex.DecodeString(specVector)
	require.NoError(t, err)
	s, err := NewSender(SenderConfig{SSRC: 0xdeadbeef, PayloadType: 111, Key: fuzzKey, FirstSequence: 10})
	require.NoError(t, err)
	s.roc = 1
	require.NoError(t, s.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, time.Unix(64*1000+10, 500_000_000)))
	pkt, err := s.Seal(nil, Sample{Payload: []byte("hello"), Timestamp: 960, AudioLevel: AudioLevel{Level: 30, Voice: true}})
	require.NoError(t, err)
	require.Equal(t, want, pkt)

	r := NewReceiver()
	require.NoError(t, r.AddSender(0xdeadbeef, fuzzKey))
	plain, err := r.Open(nil, want, nil)
	require.NoError(t, err)
	require.Equal(t, []byte("hello"), plain)

	blind, err := NewReceiverWithConfig(ReceiverConfig{ROCID: 9}) // reads no hint: ROC 0
	require.NoError(t, err)
	require.NoError(t, blind.AddSender(0xdeadbeef, fuzzKey))
	_, err = blind.Open(nil, want, nil)
	require.ErrorIs(t, err, ErrDecrypt)
}

// The test vector, computed from RFC 3711 with the standard library alone
// (no pion): key derivation (4.3.1, rate 0), AES-CM keystream (4.1.1) with
// the index 2^16 x ROC + SEQ, and HMAC-SHA1 over the packet and the ROC
// (4.2.1), cut to 80 bits.
func TestRolloverSpecVectorFromRFC3711(t *testing.T) {
	want, err := hex.DecodeString(specVector)
	require.NoError(t, err)
	ctr := func(key, iv []byte, n int) []byte {
		b, err := aes.NewCipher(key)
		require.NoError(t, err)
		out := make([]byte, n)
		cipher.NewCTR(b, iv).XORKeyStream(out, out)
		return out
	}
	derive := func(label byte, n int) []byte { // x = label<<48 XOR salt, IV = x<<16
		iv := make([]byte, 16)
		copy(iv, fuzzKey.Salt[:])
		iv[7] ^= label
		return ctr(fuzzKey.Key[:], iv, n)
	}
	encKey, authKey, saltKey := derive(0, 16), derive(1, 20), derive(2, 14)
	const roc, seq, ssrc = 1, 10, 0xdeadbeef
	iv := make([]byte, 16) // k_s<<16 XOR SSRC<<64 XOR index<<16
	copy(iv, saltKey)
	var idx [16]byte
	binary.BigEndian.PutUint64(idx[6:14], uint64(roc)<<16|seq) // the 48-bit index: bytes 8..13
	binary.BigEndian.PutUint32(idx[4:8], ssrc)                 // then the SSRC: bytes 4..7
	for i := range iv {
		iv[i] ^= idx[i]
	}
	hdr := want[:24]
	ks := ctr(encKey, iv, 5)
	enc := make([]byte, 5)
	for i, c := range []byte("hello") {
		enc[i] = c ^ ks[i]
	}
	mac := hmac.New(sha1.New, authKey)
	mac.Write(hdr)
	mac.Write(enc)
	mac.Write([]byte{0, 0, 0, roc})
	got := append(append(append([]byte{}, hdr...), enc...), mac.Sum(nil)[:10]...)
	require.Equal(t, want, got)
}
