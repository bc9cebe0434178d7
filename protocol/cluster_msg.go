package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"
)

// Cluster messages are the small authenticated messages forwarders exchange
// over NATS. Every message is one envelope:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     'C' 0x43  |    'R' 0x52   |    'L' 0x4C   |    'C' 0x43   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  version = 1  |     type      |          body length          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     body (body length bytes)                  :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         tag (16 bytes)                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// tag = HMAC-SHA256(cluster-message subkey, every byte before the tag)[:16].
// Nothing may follow the tag. The bodies are documented on MemberNotice
// and ForwarderAnnounce; README.md section 7 has the byte diagrams.

// ClusterMsgType is the envelope's type byte.
type ClusterMsgType uint8

// Cluster message types.
const (
	ClusterMsgMemberNotice      ClusterMsgType = 1
	ClusterMsgForwarderAnnounce ClusterMsgType = 2
	ClusterMsgMetadata          ClusterMsgType = 3 // forwarder -> conductor, per partition and tick
	ClusterMsgDecision          ClusterMsgType = 4 // conductor -> forwarders, per call
)

// String names the type.
func (t ClusterMsgType) String() string {
	switch t {
	case ClusterMsgMemberNotice:
		return "member-notice"
	case ClusterMsgForwarderAnnounce:
		return "forwarder-announce"
	case ClusterMsgMetadata:
		return "metadata"
	case ClusterMsgDecision:
		return "decision"
	case ClusterMsgLoadReport:
		return "load-report"
	case ClusterMsgConductorReport:
		return "conductor-report"
	case ClusterMsgPlacementMove:
		return "placement-move"
	}
	return "type-" + strconv.Itoa(int(t))
}

const (
	clusterMsgMagic      = "CRLC"
	clusterMsgVersion    = 1
	clusterMsgHeaderLen  = 8
	clusterMsgTagLen     = 16
	clusterMsgOverhead   = clusterMsgHeaderLen + clusterMsgTagLen
	maxForwarderIDLen    = 64
	clusterFamilyNone    = 0
	clusterFamilyIPv4    = 1
	clusterFamilyIPv6    = 2
	clusterAddrFixedLen  = 3 // family, port
	memberNoticeFixedLen = 50
	announceFixedLen     = 36
)

// PeekClusterMsgType checks a cluster message's envelope (magic, version,
// length, a known type) but not its tag, and returns its type, so a
// receiver on a subject that carries several types knows which Unmarshal to
// call. Only Unmarshal authenticates.
func PeekClusterMsgType(b []byte) (ClusterMsgType, error) {
	if len(b) < clusterMsgOverhead {
		return 0, fmt.Errorf("%w: %d bytes, shorter than the %d-byte envelope", ErrClusterMsgInvalid, len(b), clusterMsgOverhead)
	}
	if string(b[:4]) != clusterMsgMagic {
		return 0, fmt.Errorf("%w: magic %q, want %q", ErrClusterMsgInvalid, b[:4], clusterMsgMagic)
	}
	if b[4] != clusterMsgVersion {
		return 0, fmt.Errorf("%w: version %d, want %d", ErrClusterMsgInvalid, b[4], clusterMsgVersion)
	}
	t := ClusterMsgType(b[5])
	if t < ClusterMsgMemberNotice || t > ClusterMsgPlacementMove {
		return 0, fmt.Errorf("%w: unknown type %d", ErrClusterMsgInvalid, b[5])
	}
	if want := clusterMsgOverhead + int(binary.BigEndian.Uint16(b[6:8])); len(b) != want {
		what := "truncated"
		if len(b) > want {
			what = "trailing bytes"
		}
		return 0, fmt.Errorf("%w: %s: %d bytes, body length says %d", ErrClusterMsgInvalid, what, len(b), want)
	}
	return t, nil
}

// clusterMsgTag returns the tag over b.
func clusterMsgTag(k ClusterKey, b []byte) []byte {
	sub := k.msgKey()
	m := hmac.New(sha256.New, sub[:])
	m.Write(b)
	return m.Sum(nil)[:clusterMsgTagLen]
}

// openClusterMsg checks the envelope and tag of b and returns its body.
func openClusterMsg(b []byte, k ClusterKey, want ClusterMsgType) ([]byte, error) {
	return openClusterMsgReusing(b, k, want)
}

// sealClusterMsg appends the envelope around body, which appendBody
// appends, and the tag.
func sealClusterMsg(dst []byte, k ClusterKey, t ClusterMsgType, appendBody func([]byte) []byte) ([]byte, error) {
	start := len(dst)
	dst = append(dst, clusterMsgMagic...)
	dst = append(dst, clusterMsgVersion, byte(t), 0, 0)
	dst = appendBody(dst)
	n := len(dst) - start - clusterMsgHeaderLen
	if n > math.MaxUint16 {
		return dst[:start], fmt.Errorf("%w: %s body of %d bytes", ErrClusterMsgInvalid, t, n)
	}
	binary.BigEndian.PutUint16(dst[start+6:start+8], uint16(n))
	return clusterAppendTag(dst, k, dst[start:]), nil
}

// ValidForwarderID checks a forwarder id: 1 to 64 bytes of printable ASCII
// without space (0x21..0x7E).
func ValidForwarderID(id string) error {
	if len(id) == 0 || len(id) > maxForwarderIDLen {
		return fmt.Errorf("%w: forwarder id of %d bytes, want 1..%d", ErrClusterMsgInvalid, len(id), maxForwarderIDLen)
	}
	for i := range len(id) {
		if id[i] < 0x21 || id[i] > 0x7e {
			return fmt.Errorf("%w: forwarder id %q: byte %d is not printable ASCII", ErrClusterMsgInvalid, id, i)
		}
	}
	return nil
}

// clusterCheckAddr checks an address to be sent or just received. The zero
// AddrPort passes only if optional; otherwise the address must be valid and
// without zone, the port not 0, and, if routable, the address specified.
func clusterCheckAddr(what string, ap netip.AddrPort, optional, routable bool) error {
	if optional && ap == (netip.AddrPort{}) {
		return nil
	}
	a := ap.Addr()
	if !a.IsValid() || a.Zone() != "" || ap.Port() == 0 || (routable && a.IsUnspecified()) {
		return fmt.Errorf("%w: %s address %q", ErrClusterMsgInvalid, what, ap.String())
	}
	return nil
}

// appendClusterAddr appends family, port and address; an IPv4-mapped IPv6
// address is sent as IPv4.
func appendClusterAddr(dst []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return append(dst, clusterFamilyNone, 0, 0)
	case a.Is4():
		v4 := a.As4()
		dst = append(dst, clusterFamilyIPv4)
		dst = binary.BigEndian.AppendUint16(dst, ap.Port())
		return append(dst, v4[:]...)
	default:
		v6 := a.As16()
		dst = append(dst, clusterFamilyIPv6)
		dst = binary.BigEndian.AppendUint16(dst, ap.Port())
		return append(dst, v6[:]...)
	}
}

// readClusterAddr reads family, port and address from the front of b and
// returns the rest. Family 0 (none) must have port 0. IPv4-mapped IPv6
// addresses are unmapped.
func readClusterAddr(what string, b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < clusterAddrFixedLen {
		return netip.AddrPort{}, nil, fmt.Errorf("%w: %s address truncated", ErrClusterMsgInvalid, what)
	}
	port := binary.BigEndian.Uint16(b[1:3])
	n := 0
	switch b[0] {
	case clusterFamilyNone:
		if port != 0 {
			return netip.AddrPort{}, nil, fmt.Errorf("%w: %s address has no family but port %d", ErrClusterMsgInvalid, what, port)
		}
		return netip.AddrPort{}, b[clusterAddrFixedLen:], nil
	case clusterFamilyIPv4:
		n = 4
	case clusterFamilyIPv6:
		n = 16
	default:
		return netip.AddrPort{}, nil, fmt.Errorf("%w: %s address family %d", ErrClusterMsgInvalid, what, b[0])
	}
	b = b[clusterAddrFixedLen:]
	if len(b) < n {
		return netip.AddrPort{}, nil, fmt.Errorf("%w: %s address truncated", ErrClusterMsgInvalid, what)
	}
	a, _ := netip.AddrFromSlice(b[:n]) // the length is 4 or 16
	return netip.AddrPortFrom(a.Unmap(), port), b[n:], nil
}

// Times travel as signed Unix milliseconds; 0 is the zero time.
// clusterCheckTime refuses times whose milliseconds do not fit in 64 bits
// (some 292 million years from 1970).
func clusterCheckTime(what string, t time.Time) error {
	if t.IsZero() || time.UnixMilli(t.UnixMilli()).Unix() == t.Unix() {
		return nil
	}
	return fmt.Errorf("%w: %s time %v out of range", ErrClusterMsgInvalid, what, t)
}

func clusterAppendTime(dst []byte, t time.Time) []byte {
	var ms int64
	if !t.IsZero() {
		ms = t.UnixMilli()
	}
	return binary.BigEndian.AppendUint64(dst, uint64(ms))
}

// clusterTime decodes Unix milliseconds, in UTC.
func clusterTime(b []byte) time.Time {
	ms := int64(binary.BigEndian.Uint64(b))
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// readForwarderID takes the id (n bytes) that ends a body: b must be
// exactly that long.
func readForwarderID(b []byte, n int) (string, error) {
	if len(b) < n {
		return "", fmt.Errorf("%w: forwarder id truncated", ErrClusterMsgInvalid)
	}
	if len(b) > n {
		return "", fmt.Errorf("%w: %d trailing bytes after the body", ErrClusterMsgInvalid, len(b)-n)
	}
	id := string(b)
	return id, ValidForwarderID(id)
}

// MemberOp says what happened to a participant on a forwarder.
type MemberOp uint8

// Member operations.
const (
	// MemberPlaced: the participant is now served by the forwarder (join,
	// rejoin, move, or a re-assertion of what is already true).
	MemberPlaced MemberOp = 1
	// MemberLeft: the participant is no longer served by the forwarder.
	MemberLeft MemberOp = 2
	// MemberAsk: as MemberPlaced, and the forwarder asks who else serves
	// the call: it has just begun serving it and cannot read the call's
	// record from the store. Every other forwarder serving the call answers
	// with a fresh MemberPlaced for each participant it serves (README 7.1).
	MemberAsk MemberOp = 3
)

// Places reports whether the op says the participant is served by the
// notice's forwarder (placed or ask).
func (o MemberOp) Places() bool { return o == MemberPlaced || o == MemberAsk }

// String names the operation.
func (o MemberOp) String() string {
	switch o {
	case MemberPlaced:
		return "placed"
	case MemberLeft:
		return "left"
	case MemberAsk:
		return "ask"
	}
	return "op-" + strconv.Itoa(int(o))
}

// MemberNotice (type 1) says one participant of a call was placed on, or
// left, one forwarder. Body:
//
//	0       op (1 placed, 2 left, 3 ask: placed, and who else serves the call?)
//	1       forwarder id length n (1..64)
//	2..18   call id
//	18..34  participant id
//	34..42  state-store version after the change (0: queued)
//	42..50  at, Unix milliseconds (signed; 0: unknown)
//	50..    trunk address: family (0 none, 1 IPv4, 2 IPv6), port (2),
//	        address (0, 4 or 16 bytes)
//	..end   forwarder id (n bytes)
type MemberNotice struct {
	Op          MemberOp
	Call        ID
	Participant ID
	Forwarder   string         // forwarder id, see ValidForwarderID
	Trunk       netip.AddrPort // the forwarder's trunk address; required for MemberPlaced and MemberAsk, optional for MemberLeft
	Version     uint64         // the state-store version after the change; 0 when the change is queued (store unreachable)
	At          time.Time      // when the change happened; sent as Unix milliseconds, decoded in UTC
}

func (n *MemberNotice) check() error {
	switch n.Op {
	case MemberPlaced, MemberLeft, MemberAsk:
	default:
		return fmt.Errorf("%w: member op %d", ErrClusterMsgInvalid, n.Op)
	}
	if n.Call.IsZero() || n.Participant.IsZero() {
		return fmt.Errorf("%w: member notice without call or participant id", ErrClusterMsgInvalid)
	}
	if err := ValidForwarderID(n.Forwarder); err != nil {
		return err
	}
	if err := clusterCheckAddr("trunk", n.Trunk, !n.Op.Places(), false); err != nil {
		return err
	}
	return clusterCheckTime("at", n.At)
}

// Marshal appends the sealed message to dst. A message that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (n *MemberNotice) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := n.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgMemberNotice, func(b []byte) []byte {
		b = append(b, byte(n.Op), byte(len(n.Forwarder)))
		b = append(b, n.Call[:]...)
		b = append(b, n.Participant[:]...)
		b = binary.BigEndian.AppendUint64(b, n.Version)
		b = clusterAppendTime(b, n.At)
		b = appendClusterAddr(b, n.Trunk)
		return append(b, n.Forwarder...)
	})
}

// Unmarshal authenticates and decodes b, which must be exactly one
// MemberNotice. On error n is the zero notice.
func (n *MemberNotice) Unmarshal(b []byte, k ClusterKey) error {
	*n = MemberNotice{}
	body, err := openClusterMsg(b, k, ClusterMsgMemberNotice)
	if err != nil {
		return err
	}
	if err := n.decode(body); err != nil {
		*n = MemberNotice{}
		return err
	}
	return nil
}

func (n *MemberNotice) decode(b []byte) error {
	if len(b) < memberNoticeFixedLen {
		return fmt.Errorf("%w: member notice body of %d bytes", ErrClusterMsgInvalid, len(b))
	}
	n.Op = MemberOp(b[0])
	idLen := int(b[1])
	copy(n.Call[:], b[2:18])
	copy(n.Participant[:], b[18:34])
	n.Version = binary.BigEndian.Uint64(b[34:42])
	n.At = clusterTime(b[42:50])
	trunk, rest, err := readClusterAddr("trunk", b[memberNoticeFixedLen:])
	if err != nil {
		return err
	}
	n.Trunk = trunk
	if n.Forwarder, err = readForwarderID(rest, idLen); err != nil {
		return err
	}
	return n.check()
}

// ForwarderAnnounce (type 2) is a forwarder's heartbeat and load report,
// sent about once a second. Body:
//
//	0       flags: 0x01 draining, 0x02 an IPv6 media address follows the
//	        trunk address, 0x04 stream listeners follow; the other bits
//	        are reserved (sent 0, ignored)
//	1       forwarder id length n (1..64)
//	2..4    load, permille of configured capacity
//	4..8    sessions
//	8..12   calls
//	12..20  sequence
//	20..28  started, Unix milliseconds (signed; 0: unknown)
//	28..36  at, Unix milliseconds (signed; 0: unknown)
//	36..    media address: family (1 IPv4, 2 IPv6), port (2), address
//	..      trunk address: family (1 IPv4, 2 IPv6), port (2), address
//	..      with flag 0x02: IPv6 media address: family 2, port (2), address
//	..      with flag 0x04: stream listeners (announce_streams.go)
//	..end   forwarder id (n bytes)
type ForwarderAnnounce struct {
	ID       string         // forwarder id, see ValidForwarderID
	Media    netip.AddrPort // the address devices join: valid, port not 0, not unspecified
	Trunk    netip.AddrPort // the trunk address: valid, port not 0
	Sessions uint32
	Calls    uint32
	Draining bool
	Load     uint16    // permille of configured capacity; may exceed 1000 when overloaded
	Seq      uint64    // increases with every announce of one process
	Started  time.Time // process start: a restarted forwarder with the same ID is a new incarnation
	At       time.Time // when the report was made

	// Media6 is optional: a dual-stack forwarder's IPv6 media address, when
	// Media is its IPv4 one (IPv6, not v4-mapped, port not 0, not
	// unspecified). Sent with flag 0x02; receivers older than it reject the
	// announce, so upgrade every forwarder before configuring one.
	Media6 netip.AddrPort

	// Streams are optional: the TCP and TLS listeners (README.md section
	// 9) as devices reach them, so a peer can name them in a MigrateTo to a
	// device on a connection. Sent with flag 0x04; receivers older than it
	// reject the announce.
	Streams StreamListeners
}

const (
	announceFlagDraining = 0x01
	announceFlagMedia6   = 0x02
)

func (a *ForwarderAnnounce) check() error {
	if err := ValidForwarderID(a.ID); err != nil {
		return err
	}
	if err := clusterCheckAddr("media", a.Media, false, true); err != nil {
		return err
	}
	if err := clusterCheckAddr("trunk", a.Trunk, false, false); err != nil {
		return err
	}
	if err := clusterCheckAddr("media6", a.Media6, true, true); err != nil {
		return err
	}
	if a.Media6.IsValid() && (!a.Media6.Addr().Is6() || a.Media6.Addr().Is4In6()) {
		return fmt.Errorf("%w: media6 address %q is not IPv6", ErrClusterMsgInvalid, a.Media6.String())
	}
	if err := a.Streams.check(); err != nil {
		return err
	}
	if err := clusterCheckTime("started", a.Started); err != nil {
		return err
	}
	return clusterCheckTime("at", a.At)
}

// Marshal appends the sealed message to dst. A message that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (a *ForwarderAnnounce) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := a.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgForwarderAnnounce, func(b []byte) []byte {
		var flags byte
		if a.Draining {
			flags |= announceFlagDraining
		}
		if a.Media6.IsValid() {
			flags |= announceFlagMedia6
		}
		if a.Streams.count() > 0 {
			flags |= announceFlagStreams
		}
		b = append(b, flags, byte(len(a.ID)))
		b = binary.BigEndian.AppendUint16(b, a.Load)
		b = binary.BigEndian.AppendUint32(b, a.Sessions)
		b = binary.BigEndian.AppendUint32(b, a.Calls)
		b = binary.BigEndian.AppendUint64(b, a.Seq)
		b = clusterAppendTime(b, a.Started)
		b = clusterAppendTime(b, a.At)
		b = appendClusterAddr(b, a.Media)
		b = appendClusterAddr(b, a.Trunk)
		if a.Media6.IsValid() {
			b = appendClusterAddr(b, a.Media6)
		}
		if a.Streams.count() > 0 {
			b = a.Streams.appendTo(b)
		}
		return append(b, a.ID...)
	})
}

// Unmarshal authenticates and decodes b, which must be exactly one
// ForwarderAnnounce. On error a is the zero announce.
func (a *ForwarderAnnounce) Unmarshal(b []byte, k ClusterKey) error {
	*a = ForwarderAnnounce{}
	body, err := openClusterMsg(b, k, ClusterMsgForwarderAnnounce)
	if err != nil {
		return err
	}
	if err := a.decode(body); err != nil {
		*a = ForwarderAnnounce{}
		return err
	}
	return nil
}

func (a *ForwarderAnnounce) decode(b []byte) error {
	if len(b) < announceFixedLen {
		return fmt.Errorf("%w: forwarder announce body of %d bytes", ErrClusterMsgInvalid, len(b))
	}
	a.Draining = b[0]&announceFlagDraining != 0
	idLen := int(b[1])
	a.Load = binary.BigEndian.Uint16(b[2:4])
	a.Sessions = binary.BigEndian.Uint32(b[4:8])
	a.Calls = binary.BigEndian.Uint32(b[8:12])
	a.Seq = binary.BigEndian.Uint64(b[12:20])
	a.Started = clusterTime(b[20:28])
	a.At = clusterTime(b[28:36])
	var err error
	rest := b[announceFixedLen:]
	if a.Media, rest, err = readClusterAddr("media", rest); err != nil {
		return err
	}
	if a.Trunk, rest, err = readClusterAddr("trunk", rest); err != nil {
		return err
	}
	if b[0]&announceFlagMedia6 != 0 {
		if a.Media6, rest, err = readClusterAddr("media6", rest); err != nil {
			return err
		}
		if !a.Media6.IsValid() {
			return fmt.Errorf("%w: flag media6 without an address", ErrClusterMsgInvalid)
		}
	}
	if b[0]&announceFlagStreams != 0 {
		if a.Streams, rest, err = readStreamListeners(rest); err != nil {
			return err
		}
	}
	if a.ID, err = readForwarderID(rest, idLen); err != nil {
		return err
	}
	return a.check()
}
