package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"slices"
	"sync"
	"time"
)

// Bits of MemberMetadata.Flags. The other bits are invalid, both when
// encoding and when decoding.
const (
	MetaOnset uint8 = 1 << 0 // a loud onset was seen in the tick (a level step or the device's LoudOnset)
	MetaLeft  uint8 = 1 << 1 // the member left this forwarder during the tick
	MetaVideo uint8 = 1 << 2 // a video section (MemberMetadata.Video) follows the member's fixed fields
	MetaRTT   uint8 = 1 << 3 // the device's candidate RTTs (MemberMetadata.RTTs) follow the video section
)

const (
	metaFlagsKnown    = MetaOnset | MetaLeft | MetaVideo | MetaRTT
	metaBatchFixedLen = 23 // the batch body up to the forwarder id
	metaCallFixedLen  = 17 // call id and member count
	metaMemberLen     = 33 // a member without its video section
	metaVideoFixedLen = 10 // uplink and downlink estimates, layer count, subscription count
	metaVideoLayerLen = 4
	metaVideoSubLen   = 18 // participant id, max height
	metaMaxLevel      = 127
	metaMaxTickMillis = 10000
	metaMaxLoss       = 1000
	metaMaxMembers    = 255
	metaMaxCalls      = 65535
	clusterMaxBody    = 65535
)

// MemberMetadata is one member's audio summary for one tick, as its
// forwarder measured it, and with MetaVideo its video picture. On the wire
// it is 33 bytes, followed with MetaVideo by the video section of
// 10 + 4*Video.Layers + 18*Video.NumSubs bytes.
type MemberMetadata struct {
	Participant  ID
	Packets      uint16 // audio RTP packets received in the tick
	VoicePackets uint16 // of which with the RFC 6464 V flag (must be <= Packets)
	PayloadBytes uint32 // sum of (packet length - RTP header length) of those packets
	MeanLevel    uint8  // mean RFC 6464 level, -dBov 0..127 (127: silence or no packets); >127 is invalid
	MaxLevel     uint8  // loudest packet's level (the minimum -dBov) 0..127; >127 invalid
	Flags        uint8  // MetaOnset | MetaLeft | MetaVideo; unknown bits are invalid on decode and encode
	UplinkBps    uint32 // bits per second received from the member over the tick (all its RTP)
	LossPermille uint16 // audio packets lost in the tick from sequence gaps, per mille 0..1000 (>1000 invalid)
	// Video is on the wire only when Flags has MetaVideo; without it, it
	// must be the zero value (encoding refuses anything else) and decodes
	// as such.
	Video MemberVideo
	// RTTs is the device's latest report of its RTTs to candidate
	// forwarders (CANDIDATE-RTTS, README 3.2), on the wire only with
	// MetaRTT, after the video section; zero without it.
	RTTs CandidateRTTs
}

// MemberVideo is what a forwarder knows of one member's video at the end
// of a tick: the capacity of its links, the simulcast layers it sends and
// the videos it subscribes to, for the conductor's layer and bitrate
// decisions (CallDecision's video section). On the wire (with MetaVideo):
//
//	0..4    uplink estimate, bits per second (0: unknown)
//	4..8    downlink estimate, bits per second (0: unknown)
//	8       layer count l (0..3)
//	9       subscription count s (0..16)
//	10..    l layer rates, 4 bytes each, lowest layer first
//	..end   s subscriptions: participant id (16), max height (2)
//
// Entries of LayerBps and Subs beyond Layers and NumSubs are not written,
// and decode as zero.
type MemberVideo struct {
	UplinkEstBps   uint32                     // the forwarder's estimate of the member's uplink capacity (0 unknown)
	DownlinkEstBps uint32                     // the member's downlink capacity from its feedback (REMB), 0 unknown
	Layers         uint8                      // simulcast layers the member sends now: 0 no video, 1..MaxSimulcastLayers
	LayerBps       [MaxSimulcastLayers]uint32 // measured send rate per layer over the tick, lowest first; Layers entries in use
	NumSubs        uint8                      // entries of Subs in use, 0..MaxSubscriptions
	Subs           [MaxSubscriptions]VideoSub // the member's video subscriptions (its Subscription), no participant twice
}

// VideoSub is one video a member subscribes to.
type VideoSub struct {
	Participant ID     // whose video; not the zero id
	MaxHeight   uint16 // the largest picture height wanted, pixels; 0 no limit
}

// size returns the member's length on the wire.
func (m *MemberMetadata) size() int {
	n := metaMemberLen
	if m.Flags&MetaVideo != 0 {
		n += m.Video.size()
	}
	if m.Flags&MetaRTT != 0 {
		n += m.RTTs.Size()
	}
	return n
}

// size returns the video section's length on the wire.
func (v *MemberVideo) size() int {
	return metaVideoFixedLen + metaVideoLayerLen*int(v.Layers) + metaVideoSubLen*int(v.NumSubs)
}

// CallMetadata is the summary of the members of one call that one forwarder
// serves, for one tick.
type CallMetadata struct {
	Call    ID
	Members []MemberMetadata // 1..255 on the wire; at most 255 when encoding
}

// MetadataBatch (type 3) is what one forwarder measured in one tick for the
// calls of one conductor partition (see PartitionOf) that it serves. It is
// published on <prefix>.meta.<partition>; README.md section 7.3 has the byte
// diagram. Body:
//
//	0       forwarder id length n (1..64)
//	1..3    partition
//	3..5    tick length, ms (1..10000)
//	5..7    call count
//	7..15   sequence
//	15..23  at, Unix milliseconds (signed; 0: unknown)
//	23..    forwarder id (n bytes)
//	..end   the calls, each: call id (16), member count m (1..255), then
//	        m members of 33 bytes: participant id (16), packets (2),
//	        voice packets (2), payload bytes (4), uplink bps (4), loss
//	        permille (2), mean level (1), max level (1), flags (1), each
//	        followed, with MetaVideo, by its video section (MemberVideo)
type MetadataBatch struct {
	Forwarder  string         // ValidForwarderID
	Partition  uint16         // the partition all Calls hash to
	Seq        uint64         // counts the forwarder's batches for this partition
	At         time.Time      // the tick's end; sent as Unix milliseconds, decoded in UTC
	TickMillis uint16         // the tick length in ms, 1..10000
	Calls      []CallMetadata // 0..65535 calls; the body must fit the envelope's uint16 length
}

// MarshalSize returns the length of the sealed message, which must not
// exceed 65559 (8 + 65535 + 16) bytes: a forwarder that serves many calls
// of one partition splits them over several batches.
func (b *MetadataBatch) MarshalSize() int {
	n := clusterMsgOverhead + metaBatchFixedLen + len(b.Forwarder)
	for i := range b.Calls {
		n += metaCallFixedLen
		for j := range b.Calls[i].Members {
			n += b.Calls[i].Members[j].size()
		}
	}
	return n
}

func (m *MemberMetadata) check() error {
	switch {
	case m.Participant.IsZero():
		return fmt.Errorf("%w: member without participant id", ErrClusterMsgInvalid)
	case m.VoicePackets > m.Packets:
		return fmt.Errorf("%w: member %s: %d voice packets of %d", ErrClusterMsgInvalid, m.Participant, m.VoicePackets, m.Packets)
	case m.MeanLevel > metaMaxLevel || m.MaxLevel > metaMaxLevel:
		return fmt.Errorf("%w: member %s: level mean %d max %d, want 0..%d", ErrClusterMsgInvalid, m.Participant, m.MeanLevel, m.MaxLevel, metaMaxLevel)
	case m.Flags&^metaFlagsKnown != 0:
		return fmt.Errorf("%w: member %s: unknown flags %#02x", ErrClusterMsgInvalid, m.Participant, m.Flags&^metaFlagsKnown)
	case m.LossPermille > metaMaxLoss:
		return fmt.Errorf("%w: member %s: loss %d permille", ErrClusterMsgInvalid, m.Participant, m.LossPermille)
	case m.Flags&MetaVideo == 0 && m.Video != MemberVideo{}:
		return fmt.Errorf("%w: member %s: video fields set without the video flag", ErrClusterMsgInvalid, m.Participant)
	case m.Flags&MetaRTT == 0 && m.RTTs != CandidateRTTs{}:
		return fmt.Errorf("%w: member %s: RTTs set without the RTT flag", ErrClusterMsgInvalid, m.Participant)
	case m.Flags&MetaRTT != 0:
		if err := m.RTTs.Check(); err != nil {
			return fmt.Errorf("%w: member %s: %w", ErrClusterMsgInvalid, m.Participant, err)
		}
	}
	if m.Flags&MetaVideo != 0 {
		return m.Video.check(m.Participant)
	}
	return nil
}

// check checks the counts and the subscriptions in use; p names the member
// in errors.
func (v *MemberVideo) check(p ID) error {
	if v.Layers > MaxSimulcastLayers {
		return fmt.Errorf("%w: member %s: %d video layers, want 0..%d", ErrClusterMsgInvalid, p, v.Layers, MaxSimulcastLayers)
	}
	if v.NumSubs > MaxSubscriptions {
		return fmt.Errorf("%w: member %s: %d subscriptions, want 0..%d", ErrClusterMsgInvalid, p, v.NumSubs, MaxSubscriptions)
	}
	for i := range int(v.NumSubs) {
		if err := v.checkSub(p, i); err != nil {
			return err
		}
	}
	return nil
}

// checkSub checks v.Subs[i] against the subscriptions before it.
func (v *MemberVideo) checkSub(p ID, i int) error {
	s := v.Subs[i].Participant
	if s.IsZero() {
		return fmt.Errorf("%w: member %s subscribes to the zero participant id", ErrClusterMsgInvalid, p)
	}
	for _, q := range v.Subs[:i] {
		if q.Participant == s {
			return fmt.Errorf("%w: member %s subscribes to %s twice", ErrClusterMsgInvalid, p, s)
		}
	}
	return nil
}

func (c *CallMetadata) check() error {
	if c.Call.IsZero() {
		return fmt.Errorf("%w: call metadata without call id", ErrClusterMsgInvalid)
	}
	if len(c.Members) == 0 || len(c.Members) > metaMaxMembers {
		return fmt.Errorf("%w: call %s with %d members, want 1..%d", ErrClusterMsgInvalid, c.Call, len(c.Members), metaMaxMembers)
	}
	for i := range c.Members {
		if err := c.Members[i].check(); err != nil {
			return err
		}
	}
	return nil
}

// checkHead checks the fields before the calls.
func (b *MetadataBatch) checkHead() error {
	if err := ValidForwarderID(b.Forwarder); err != nil {
		return err
	}
	if b.TickMillis == 0 || b.TickMillis > metaMaxTickMillis {
		return fmt.Errorf("%w: tick of %d ms, want 1..%d", ErrClusterMsgInvalid, b.TickMillis, metaMaxTickMillis)
	}
	return clusterCheckTime("at", b.At)
}

func (b *MetadataBatch) check() error {
	if err := b.checkHead(); err != nil {
		return err
	}
	if len(b.Calls) > metaMaxCalls {
		return fmt.Errorf("%w: %d calls in a batch, want at most %d", ErrClusterMsgInvalid, len(b.Calls), metaMaxCalls)
	}
	for i := range b.Calls {
		if err := b.Calls[i].check(); err != nil {
			return err
		}
	}
	if n := b.MarshalSize() - clusterMsgOverhead; n > clusterMaxBody {
		return fmt.Errorf("%w: metadata body of %d bytes, want at most %d: split the batch", ErrClusterMsgInvalid, n, clusterMaxBody)
	}
	return nil
}

// Marshal appends the sealed message to dst. A batch that breaks the rules
// on its fields, or is too large for one message, is refused with
// ErrClusterMsgInvalid and dst is returned as it was.
func (b *MetadataBatch) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := b.check(); err != nil {
		return dst, err
	}
	size := b.MarshalSize()
	return sealClusterMsg(dst, k, ClusterMsgMetadata, func(out []byte) []byte {
		out = slices.Grow(out, size-clusterMsgHeaderLen)
		out = append(out, byte(len(b.Forwarder)))
		out = binary.BigEndian.AppendUint16(out, b.Partition)
		out = binary.BigEndian.AppendUint16(out, b.TickMillis)
		out = binary.BigEndian.AppendUint16(out, uint16(len(b.Calls)))
		out = binary.BigEndian.AppendUint64(out, b.Seq)
		out = clusterAppendTime(out, b.At)
		out = append(out, b.Forwarder...)
		for i := range b.Calls {
			c := &b.Calls[i]
			out = append(out, c.Call[:]...)
			out = append(out, byte(len(c.Members)))
			for j := range c.Members {
				out = c.Members[j].append(out)
			}
		}
		return out
	})
}

func (m *MemberMetadata) append(b []byte) []byte {
	b = append(b, m.Participant[:]...)
	b = binary.BigEndian.AppendUint16(b, m.Packets)
	b = binary.BigEndian.AppendUint16(b, m.VoicePackets)
	b = binary.BigEndian.AppendUint32(b, m.PayloadBytes)
	b = binary.BigEndian.AppendUint32(b, m.UplinkBps)
	b = binary.BigEndian.AppendUint16(b, m.LossPermille)
	b = append(b, m.MeanLevel, m.MaxLevel, m.Flags)
	if m.Flags&MetaVideo != 0 {
		b = m.Video.append(b)
	}
	if m.Flags&MetaRTT != 0 {
		b, _ = m.RTTs.Append(b) // checked before encoding
	}
	return b
}

func (v *MemberVideo) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, v.UplinkEstBps)
	b = binary.BigEndian.AppendUint32(b, v.DownlinkEstBps)
	b = append(b, v.Layers, v.NumSubs)
	for _, r := range v.LayerBps[:v.Layers] {
		b = binary.BigEndian.AppendUint32(b, r)
	}
	for _, s := range v.Subs[:v.NumSubs] {
		b = append(b, s.Participant[:]...)
		b = binary.BigEndian.AppendUint16(b, s.MaxHeight)
	}
	return b
}

// decode reads and checks one member at the front of b and returns its
// length on the wire.
func (m *MemberMetadata) decode(b []byte) (int, error) {
	if len(b) < metaMemberLen {
		return 0, fmt.Errorf("%w: member truncated", ErrClusterMsgInvalid)
	}
	*m = MemberMetadata{}
	copy(m.Participant[:], b[:16])
	m.Packets = binary.BigEndian.Uint16(b[16:18])
	m.VoicePackets = binary.BigEndian.Uint16(b[18:20])
	m.PayloadBytes = binary.BigEndian.Uint32(b[20:24])
	m.UplinkBps = binary.BigEndian.Uint32(b[24:28])
	m.LossPermille = binary.BigEndian.Uint16(b[28:30])
	m.MeanLevel, m.MaxLevel, m.Flags = b[30], b[31], b[32]
	flags := m.Flags
	m.Flags &^= MetaRTT // checked once its section is read
	if err := m.check(); err != nil {
		return 0, err
	}
	n := metaMemberLen
	if flags&MetaVideo != 0 {
		v, err := m.Video.decode(m.Participant, b[n:])
		if err != nil {
			return 0, err
		}
		n += v
	}
	if flags&MetaRTT != 0 {
		r, err := m.RTTs.Decode(b[n:])
		if err != nil {
			return 0, fmt.Errorf("%w: member %s: %w", ErrClusterMsgInvalid, m.Participant, err)
		}
		n += r
		m.Flags = flags
	}
	return n, nil
}

// decode reads and checks the video section at the front of b and
// returns its length; p names the member in errors.
func (v *MemberVideo) decode(p ID, b []byte) (int, error) {
	if len(b) < metaVideoFixedLen {
		return 0, fmt.Errorf("%w: member %s: video section truncated", ErrClusterMsgInvalid, p)
	}
	v.UplinkEstBps = binary.BigEndian.Uint32(b[0:4])
	v.DownlinkEstBps = binary.BigEndian.Uint32(b[4:8])
	v.Layers, v.NumSubs = b[8], b[9]
	if v.Layers > MaxSimulcastLayers || v.NumSubs > MaxSubscriptions {
		return 0, v.check(p)
	}
	n := v.size()
	if len(b) < n {
		return 0, fmt.Errorf("%w: member %s: video section of %d layers and %d subscriptions truncated", ErrClusterMsgInvalid, p, v.Layers, v.NumSubs)
	}
	off := metaVideoFixedLen
	for i := range int(v.Layers) {
		v.LayerBps[i] = binary.BigEndian.Uint32(b[off : off+4])
		off += metaVideoLayerLen
	}
	for i := range int(v.NumSubs) {
		s := &v.Subs[i]
		copy(s.Participant[:], b[off:off+16])
		s.MaxHeight = binary.BigEndian.Uint16(b[off+16 : off+18])
		off += metaVideoSubLen
		if err := v.checkSub(p, i); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Unmarshal authenticates and decodes data, which must be exactly one
// MetadataBatch.
//
// It reuses b's memory: b.Calls and each b.Calls[i].Members keep their
// backing arrays (also the part beyond their length) and are refilled, and
// b.Forwarder is replaced only when the id differs, so a receiver that
// decodes batch after batch into one MetadataBatch allocates nothing once
// it has seen a batch as large as the current one. The flip side: slices
// taken from an earlier decode are overwritten; copy what must outlive the
// next Unmarshal. A batch without calls leaves b.Calls empty, not nil,
// once b has held calls.
//
// On error b holds no calls and its other fields are zero; errors wrap
// ErrClusterMsgInvalid or ErrClusterMsgAuth.
func (b *MetadataBatch) Unmarshal(data []byte, k ClusterKey) error {
	body, err := openClusterMsgReusing(data, k, ClusterMsgMetadata)
	if err == nil {
		err = b.decode(body)
	}
	if err != nil {
		*b = MetadataBatch{Calls: b.Calls[:0]}
		return err
	}
	return nil
}

func (b *MetadataBatch) decode(body []byte) error {
	if len(body) < metaBatchFixedLen {
		return fmt.Errorf("%w: metadata body of %d bytes", ErrClusterMsgInvalid, len(body))
	}
	idLen := int(body[0])
	b.Partition = binary.BigEndian.Uint16(body[1:3])
	b.TickMillis = binary.BigEndian.Uint16(body[3:5])
	calls := int(binary.BigEndian.Uint16(body[5:7]))
	b.Seq = binary.BigEndian.Uint64(body[7:15])
	b.At = clusterTime(body[15:23])
	rest := body[metaBatchFixedLen:]
	var err error
	if b.Forwarder, rest, err = readClusterID("forwarder", rest, idLen, b.Forwarder); err != nil {
		return err
	}
	if err := b.checkHead(); err != nil {
		return err
	}
	// Every call takes at least one member: refuse a count the body cannot
	// hold before growing anything for it.
	if need := calls * (metaCallFixedLen + metaMemberLen); len(rest) < need {
		return fmt.Errorf("%w: calls truncated: %d calls in %d bytes", ErrClusterMsgInvalid, calls, len(rest))
	}
	b.Calls = b.Calls[:0]
	for range calls {
		if rest, err = b.decodeCall(rest); err != nil {
			return err
		}
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after the body", ErrClusterMsgInvalid, len(rest))
	}
	return nil
}

// decodeCall appends the call at the front of b to b.Calls, reusing the
// slot beyond the length (and its Members array) when there is one, and
// returns the rest.
func (b *MetadataBatch) decodeCall(rest []byte) ([]byte, error) {
	if len(rest) < metaCallFixedLen {
		return nil, fmt.Errorf("%w: call truncated", ErrClusterMsgInvalid)
	}
	if n := len(b.Calls); n < cap(b.Calls) {
		b.Calls = b.Calls[:n+1]
	} else {
		b.Calls = append(b.Calls, CallMetadata{})
	}
	c := &b.Calls[len(b.Calls)-1]
	copy(c.Call[:], rest[:16])
	members := int(rest[16])
	rest = rest[metaCallFixedLen:]
	if c.Call.IsZero() {
		return nil, fmt.Errorf("%w: call metadata without call id", ErrClusterMsgInvalid)
	}
	if members == 0 {
		return nil, fmt.Errorf("%w: call %s without members", ErrClusterMsgInvalid, c.Call)
	}
	// Every member takes at least metaMemberLen bytes.
	if len(rest) < members*metaMemberLen {
		return nil, fmt.Errorf("%w: call %s: %d members truncated", ErrClusterMsgInvalid, c.Call, members)
	}
	c.Members = c.Members[:0]
	for j := range members {
		c.Members = append(c.Members, MemberMetadata{})
		n, err := c.Members[j].decode(rest)
		if err != nil {
			return nil, err
		}
		rest = rest[n:]
	}
	return rest, nil
}

// readClusterID reads an id of n bytes (a forwarder or conductor id) from
// the front of b and returns it and the rest; the caller validates it. It
// returns cur itself, without allocating, when the bytes spell cur.
func readClusterID(what string, b []byte, n int, cur string) (string, []byte, error) {
	if len(b) < n {
		return "", nil, fmt.Errorf("%w: %s id truncated", ErrClusterMsgInvalid, what)
	}
	if string(b[:n]) == cur { // compared without converting
		return cur, b[n:], nil
	}
	return string(b[:n]), b[n:], nil
}

// clusterMAC is an HMAC-SHA256 keyed with one cluster key's message subkey.
// Deriving the subkey and keying an HMAC allocate, so messages that must
// open without allocating borrow one of clusterMACs instead.
type clusterMAC struct {
	mu  sync.Mutex
	key ClusterKey
	mac hash.Hash // nil until first used
	sum [sha256.Size]byte
}

// clusterMACs are the keyed MACs that opening messages borrows, each taken
// with TryLock: an uncontended open always gets the first one, so a warm
// decode allocates nothing (a sync.Pool would not promise that: it may
// drop what was put back, and does so on purpose under the race detector).
// When every one is busy the opener makes a MAC of its own for the one
// message. A process normally holds one cluster key; a MAC last used with
// another key (a rotation, a test) is keyed again.
var clusterMACs [16]clusterMAC

// clusterTagMatches reports, in constant time, whether tag is the first
// clusterMsgTagLen bytes of b's MAC under k.
func clusterTagMatches(k ClusterKey, b, tag []byte) bool {
	var sum [sha256.Size]byte
	return hmac.Equal(clusterAppendTag(sum[:0], k, b), tag)
}

// clusterAppendTag appends the tag of b under k to dst, with a borrowed
// keyed MAC when one is free (no allocation), else a fresh one.
func clusterAppendTag(dst []byte, k ClusterKey, b []byte) []byte {
	for i := range clusterMACs {
		m := &clusterMACs[i]
		if !m.mu.TryLock() {
			continue
		}
		if m.mac == nil || m.key != k {
			sub := k.msgKey()
			m.key, m.mac = k, hmac.New(sha256.New, sub[:])
		}
		m.mac.Reset() // the first Reset saves the keyed state; later ones only restore it
		m.mac.Write(b)
		dst = append(dst, m.mac.Sum(m.sum[:0])[:clusterMsgTagLen]...)
		m.mu.Unlock()
		return dst
	}
	return append(dst, clusterMsgTag(k, b)...)
}

// openClusterMsgReusing does what openClusterMsg does (envelope, tag in
// constant time, then type) with a borrowed MAC, so that an authentic
// message is opened without allocating.
func openClusterMsgReusing(b []byte, k ClusterKey, want ClusterMsgType) ([]byte, error) {
	t, err := PeekClusterMsgType(b)
	if err != nil {
		return nil, err
	}
	end := len(b) - clusterMsgTagLen
	if !clusterTagMatches(k, b[:end], b[end:]) {
		return nil, fmt.Errorf("%w: %s of %d bytes", ErrClusterMsgAuth, t, len(b))
	}
	if t != want {
		return nil, fmt.Errorf("%w: got a %s, want a %s", ErrClusterMsgInvalid, t, want)
	}
	return b[clusterMsgHeaderLen:end], nil
}
