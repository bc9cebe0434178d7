package protocol

import (
	"encoding/binary"
	"fmt"
	"time"
)

const (
	decisionFixedLen      = 52 // the body up to the conductor id
	decisionMaxForward    = 255
	decisionForwardSize   = 16
	decisionVideoFixedLen = 4  // sender count, reserved, assignment count
	decisionSenderLen     = 36 // id, layers, 3 reserved, total, 3 layer targets
	decisionAssignLen     = 33 // receiver, sender, rank
	decisionMaxSenders    = 255
	decisionMaxAssigns    = 65535
)

// CallDecision (type 4) is what the conductor that owns a call decided for
// it: the dominant speaker and whose audio the forwarders forward. It is
// published on the call's subject <prefix>.call.<call id>, which it shares
// with MemberNotice. README.md section 7.4 has the byte diagram. Body:
//
//	0       conductor id length n (1..64)
//	1       forward count c (0..255)
//	2..4    partition
//	4..8    epoch (>= 1)
//	8..12   sequence
//	12..20  at, Unix milliseconds (signed; 0: unknown)
//	20..36  call id
//	36..52  dominant participant id (all zeros: nobody yet)
//	52..    conductor id (n bytes)
//	..      c participant ids (16 bytes each), no two alike
//	..end   optional video section, present iff bytes follow the ids:
//	        sender count s (1), reserved (1, 0), assignment count a (2),
//	        s sender targets of 36 bytes: participant id (16), layers
//	        (1, 1..3), reserved (3, 0), total bps (4), 3 layer targets
//	        (4 each, lowest first, 0 beyond layers); then a assignments
//	        of 33 bytes: receiver id (16), sender id (16), rank (1)
//
// A decision without video is byte for byte what it was before the video
// section existed.
//
// A receiver applies a decision only if it is Newer than the last one it
// applied for the call: a lower epoch comes from a conductor whose lease was
// taken over (fenced off).
type CallDecision struct {
	Call      ID
	Partition uint16    // PartitionOf(Call, n) of the deciding conductor's cluster
	Epoch     uint32    // lease epoch of the deciding conductor (fencing), >= 1
	Seq       uint32    // counts that conductor's decisions for the call
	At        time.Time // when it decided; sent as Unix milliseconds, decoded in UTC
	Dominant  ID        // zero ID: nobody dominant yet
	Forward   []ID      // participants whose audio is forwarded, 0..255, no duplicates (duplicate is ErrClusterMsgInvalid)
	Conductor string    // id of the deciding conductor instance, same rules as ValidForwarderID

	// Video says whether the decision steers video (the video section is
	// on the wire). Without it Senders and Layers must be empty, and
	// forwarders apply their own video policy.
	Video bool
	// Senders are the uplink targets of the call's video senders, 0..255,
	// no participant twice. A sender not listed gets no target.
	Senders []SenderTarget
	// Layers are the per-receiver limits, no (receiver, sender) pair
	// twice; their number is limited only by the body's 65535 bytes. A
	// pair not listed is left to the forwarder.
	Layers []LayerAssign
}

// SenderTarget is the conductor's uplink target for one video sender, which
// its forwarder passes on as TargetBitrate and SimulcastControl (README.md
// sections 5.2, 5.3).
type SenderTarget struct {
	Participant ID
	// Layers is how the sender should send its camera video:
	// 1 one stream, 2..MaxSimulcastLayers a simulcast split.
	Layers uint8
	// TotalBps is the whole uplink target, audio included, bits per second.
	TotalBps uint32
	// LayerBps are the per-layer targets, lowest first, bits per second;
	// 0 means "do not send this layer". Entries beyond Layers are sent as
	// 0 (whatever they hold) and must be 0 on receipt.
	LayerBps [MaxSimulcastLayers]uint32
}

// LayerAssign limits the video one receiver gets from one sender.
type LayerAssign struct {
	Receiver, Sender ID // neither the zero id
	// Rank is the highest quality rank (VideoFrame.Rank, 0..2) the
	// receiver may get from the sender, or RankNone: do not forward the
	// sender's video to the receiver.
	Rank uint8
}

// MarshalSize returns the length of the sealed message; the body (the size
// less 24) must not exceed 65535 bytes.
func (d *CallDecision) MarshalSize() int {
	n := clusterMsgOverhead + decisionFixedLen + len(d.Conductor) + decisionForwardSize*len(d.Forward)
	if d.Video {
		n += decisionVideoFixedLen + decisionSenderLen*len(d.Senders) + decisionAssignLen*len(d.Layers)
	}
	return n
}

// Newer reports whether d was decided after prev: a higher epoch, or the
// same epoch and a higher sequence. Every decision is newer than a nil
// prev. Both must be about the same call; Newer does not compare Call.
func (d *CallDecision) Newer(prev *CallDecision) bool {
	if prev == nil {
		return true
	}
	if d.Epoch != prev.Epoch {
		return d.Epoch > prev.Epoch
	}
	return d.Seq > prev.Seq
}

// checkHead checks the fields other than Forward.
func (d *CallDecision) checkHead() error {
	if d.Call.IsZero() {
		return fmt.Errorf("%w: decision without call id", ErrClusterMsgInvalid)
	}
	if d.Epoch == 0 {
		return fmt.Errorf("%w: decision for call %s with epoch 0", ErrClusterMsgInvalid, d.Call)
	}
	if err := ValidForwarderID(d.Conductor); err != nil {
		return fmt.Errorf("conductor id: %w", err)
	}
	return clusterCheckTime("at", d.At)
}

// checkForward checks d.Forward[i] against the ids before it. Comparing
// with every earlier id costs at most 255*254/2 comparisons of 16 bytes,
// less than sorting a copy would, and allocates nothing.
func (d *CallDecision) checkForward(i int) error {
	p := d.Forward[i]
	if p.IsZero() {
		return fmt.Errorf("%w: decision for call %s forwards the zero participant id", ErrClusterMsgInvalid, d.Call)
	}
	for _, q := range d.Forward[:i] {
		if q == p {
			return fmt.Errorf("%w: decision for call %s forwards %s twice", ErrClusterMsgInvalid, d.Call, p)
		}
	}
	return nil
}

// checkSender checks d.Senders[i] against the senders before it. Layer
// targets beyond Layers are not checked: they are not sent.
func (d *CallDecision) checkSender(i int) error {
	s := &d.Senders[i]
	if s.Participant.IsZero() {
		return fmt.Errorf("%w: decision for call %s targets the zero participant id", ErrClusterMsgInvalid, d.Call)
	}
	if s.Layers < 1 || s.Layers > MaxSimulcastLayers {
		return fmt.Errorf("%w: decision for call %s: sender %s with %d layers, want 1..%d", ErrClusterMsgInvalid, d.Call, s.Participant, s.Layers, MaxSimulcastLayers)
	}
	for j := range d.Senders[:i] {
		if d.Senders[j].Participant == s.Participant {
			return fmt.Errorf("%w: decision for call %s targets sender %s twice", ErrClusterMsgInvalid, d.Call, s.Participant)
		}
	}
	return nil
}

// checkAssign checks d.Layers[i] against the assignments before it. Like
// checkForward it compares with every earlier pair: a call's assignments
// are about (video senders) x (their receivers), a few hundred, and even
// the most a body can hold (1984) costs about two million comparisons,
// without allocating.
func (d *CallDecision) checkAssign(i int) error {
	a := d.Layers[i]
	switch {
	case a.Receiver.IsZero() || a.Sender.IsZero():
		return fmt.Errorf("%w: decision for call %s assigns a layer with a zero participant id", ErrClusterMsgInvalid, d.Call)
	case a.Rank >= MaxSimulcastLayers && a.Rank != RankNone:
		return fmt.Errorf("%w: decision for call %s: rank %d, want 0..%d or %d", ErrClusterMsgInvalid, d.Call, a.Rank, MaxSimulcastLayers-1, RankNone)
	}
	for _, b := range d.Layers[:i] {
		if b.Receiver == a.Receiver && b.Sender == a.Sender {
			return fmt.Errorf("%w: decision for call %s assigns receiver %s sender %s twice", ErrClusterMsgInvalid, d.Call, a.Receiver, a.Sender)
		}
	}
	return nil
}

func (d *CallDecision) check() error {
	if err := d.checkHead(); err != nil {
		return err
	}
	if len(d.Forward) > decisionMaxForward {
		return fmt.Errorf("%w: decision for call %s forwards %d participants, want at most %d", ErrClusterMsgInvalid, d.Call, len(d.Forward), decisionMaxForward)
	}
	for i := range d.Forward {
		if err := d.checkForward(i); err != nil {
			return err
		}
	}
	return d.checkVideo()
}

// checkVideo checks the video section of a decision to send.
func (d *CallDecision) checkVideo() error {
	if !d.Video {
		if len(d.Senders) != 0 || len(d.Layers) != 0 {
			return fmt.Errorf("%w: decision for call %s has video targets but not Video", ErrClusterMsgInvalid, d.Call)
		}
		return nil
	}
	if len(d.Senders) > decisionMaxSenders {
		return fmt.Errorf("%w: decision for call %s targets %d senders, want at most %d", ErrClusterMsgInvalid, d.Call, len(d.Senders), decisionMaxSenders)
	}
	if len(d.Layers) > decisionMaxAssigns {
		return fmt.Errorf("%w: decision for call %s has %d layer assignments, want at most %d", ErrClusterMsgInvalid, d.Call, len(d.Layers), decisionMaxAssigns)
	}
	if n := d.MarshalSize() - clusterMsgOverhead; n > clusterMaxBody {
		return fmt.Errorf("%w: decision body of %d bytes, want at most %d", ErrClusterMsgInvalid, n, clusterMaxBody)
	}
	for i := range d.Senders {
		if err := d.checkSender(i); err != nil {
			return err
		}
	}
	for i := range d.Layers {
		if err := d.checkAssign(i); err != nil {
			return err
		}
	}
	return nil
}

// Marshal appends the sealed message to dst. A decision that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (d *CallDecision) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := d.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgDecision, func(b []byte) []byte {
		b = append(b, byte(len(d.Conductor)), byte(len(d.Forward)))
		b = binary.BigEndian.AppendUint16(b, d.Partition)
		b = binary.BigEndian.AppendUint32(b, d.Epoch)
		b = binary.BigEndian.AppendUint32(b, d.Seq)
		b = clusterAppendTime(b, d.At)
		b = append(b, d.Call[:]...)
		b = append(b, d.Dominant[:]...)
		b = append(b, d.Conductor...)
		for i := range d.Forward {
			b = append(b, d.Forward[i][:]...)
		}
		if d.Video {
			b = d.appendVideo(b)
		}
		return b
	})
}

func (d *CallDecision) appendVideo(b []byte) []byte {
	b = append(b, byte(len(d.Senders)), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.Layers))) //nolint:gosec // checked: at most 65535
	for i := range d.Senders {
		s := &d.Senders[i]
		b = append(b, s.Participant[:]...)
		b = append(b, s.Layers, 0, 0, 0)
		b = binary.BigEndian.AppendUint32(b, s.TotalBps)
		for l := range MaxSimulcastLayers {
			var v uint32
			if l < int(s.Layers) {
				v = s.LayerBps[l]
			}
			b = binary.BigEndian.AppendUint32(b, v)
		}
	}
	for i := range d.Layers {
		a := &d.Layers[i]
		b = append(b, a.Receiver[:]...)
		b = append(b, a.Sender[:]...)
		b = append(b, a.Rank)
	}
	return b
}

// Unmarshal authenticates and decodes b, which must be exactly one
// CallDecision. It reuses the backing arrays of d.Forward, d.Senders and
// d.Layers and keeps d.Conductor when the id is unchanged, so decoding
// decision after decision into one CallDecision allocates nothing once
// warm; slices taken from d are overwritten by the next Unmarshal. A
// decision that forwards nobody leaves d.Forward empty, not nil, once d has
// held ids; likewise Senders and Layers.
//
// On error d forwards nobody, has no video section and its other fields
// are zero; errors wrap ErrClusterMsgInvalid or ErrClusterMsgAuth.
func (d *CallDecision) Unmarshal(b []byte, k ClusterKey) error {
	body, err := openClusterMsgReusing(b, k, ClusterMsgDecision)
	if err == nil {
		err = d.decode(body)
	}
	if err != nil {
		*d = CallDecision{Forward: d.Forward[:0], Senders: d.Senders[:0], Layers: d.Layers[:0]}
		return err
	}
	return nil
}

func (d *CallDecision) decode(b []byte) error {
	if len(b) < decisionFixedLen {
		return fmt.Errorf("%w: decision body of %d bytes", ErrClusterMsgInvalid, len(b))
	}
	idLen, count := int(b[0]), int(b[1])
	d.Partition = binary.BigEndian.Uint16(b[2:4])
	d.Epoch = binary.BigEndian.Uint32(b[4:8])
	d.Seq = binary.BigEndian.Uint32(b[8:12])
	d.At = clusterTime(b[12:20])
	copy(d.Call[:], b[20:36])
	copy(d.Dominant[:], b[36:52])
	rest := b[decisionFixedLen:]
	var err error
	if d.Conductor, rest, err = readClusterID("conductor", rest, idLen, d.Conductor); err != nil {
		return err
	}
	if err := d.checkHead(); err != nil {
		return err
	}
	if len(rest) < count*decisionForwardSize {
		return fmt.Errorf("%w: forward list truncated: %d ids in %d bytes", ErrClusterMsgInvalid, count, len(rest))
	}
	d.Forward = d.Forward[:0]
	for i := range count {
		d.Forward = append(d.Forward, ID(rest[i*decisionForwardSize:(i+1)*decisionForwardSize]))
		if err := d.checkForward(i); err != nil {
			return err
		}
	}
	d.Video, d.Senders, d.Layers = false, d.Senders[:0], d.Layers[:0]
	if rest = rest[count*decisionForwardSize:]; len(rest) == 0 {
		return nil
	}
	return d.decodeVideo(rest)
}

// decodeVideo decodes the video section, which is all of b.
func (d *CallDecision) decodeVideo(b []byte) error {
	if len(b) < decisionVideoFixedLen {
		return fmt.Errorf("%w: %d trailing bytes after the forward list, too few for a video section", ErrClusterMsgInvalid, len(b))
	}
	senders, assigns := int(b[0]), int(binary.BigEndian.Uint16(b[2:4]))
	if b[1] != 0 {
		return fmt.Errorf("%w: decision for call %s: video section reserved byte %#02x", ErrClusterMsgInvalid, d.Call, b[1])
	}
	// Refuse counts the body cannot hold before growing anything for them.
	if want := decisionVideoFixedLen + decisionSenderLen*senders + decisionAssignLen*assigns; len(b) != want {
		what := "truncated"
		if len(b) > want {
			what = "trailing bytes"
		}
		return fmt.Errorf("%w: video section %s: %d senders and %d assignments in %d bytes", ErrClusterMsgInvalid, what, senders, assigns, len(b))
	}
	d.Video = true
	b = b[decisionVideoFixedLen:]
	for i := range senders {
		if err := d.decodeSender(i, b[i*decisionSenderLen:(i+1)*decisionSenderLen]); err != nil {
			return err
		}
	}
	b = b[senders*decisionSenderLen:]
	for i := range assigns {
		a := b[i*decisionAssignLen : (i+1)*decisionAssignLen]
		d.Layers = append(d.Layers, LayerAssign{Receiver: ID(a[0:16]), Sender: ID(a[16:32]), Rank: a[32]})
		if err := d.checkAssign(i); err != nil {
			return err
		}
	}
	return nil
}

// decodeSender appends the sender target b, the i-th, to d.Senders and
// checks it.
func (d *CallDecision) decodeSender(i int, b []byte) error {
	s := SenderTarget{Participant: ID(b[0:16]), Layers: b[16], TotalBps: binary.BigEndian.Uint32(b[20:24])}
	if b[17]|b[18]|b[19] != 0 {
		return fmt.Errorf("%w: decision for call %s: sender %s reserved bytes %x", ErrClusterMsgInvalid, d.Call, s.Participant, b[17:20])
	}
	for l := range MaxSimulcastLayers {
		s.LayerBps[l] = binary.BigEndian.Uint32(b[24+4*l : 28+4*l])
	}
	d.Senders = append(d.Senders, s)
	if err := d.checkSender(i); err != nil {
		return err
	}
	for l := int(s.Layers); l < MaxSimulcastLayers; l++ {
		if s.LayerBps[l] != 0 {
			return fmt.Errorf("%w: decision for call %s: sender %s has %d layers but a target for layer %d", ErrClusterMsgInvalid, d.Call, s.Participant, s.Layers, l)
		}
	}
	return nil
}
